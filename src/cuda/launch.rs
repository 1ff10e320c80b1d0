//! xcache's launcher for the CUDA templates' kernels compiled by NVRTC: the launch
//! decisions that each template's host launcher (`xc_elemwise`, `xc_reduce`,
//! `xc_gemm_config`, compiled by nvcc) makes in C, made here in Rust, and queued through
//! the driver. One launcher for every template instance, instead of a shared object each.
//!
//! Each function here is a pure plan: shape, pointers, the device's multiprocessors and
//! two questions put to the caller (a kernel's resident blocks per multiprocessor; a
//! stream-ordered workspace) give the kernels to launch, by name, with grid, block,
//! dynamic shared memory and arguments. They follow the C launchers line for line (the
//! comments name what they mirror), so both backends choose the same kernel and grid for
//! every shape; the GPU tests run every strategy through both. The numbers that belong
//! to a template (threads per block, vector width, GEMM tile configurations and size
//! class) are read from the rendered source's `xcache-launch` line, written by the
//! template next to the kernels they describe, not repeated here.

use arrayvec::{ArrayString, ArrayVec};

use crate::error::{Error, Result};

/// A kernel's name, held inline (a launch allocates nothing).
pub type KernelName = ArrayString<40>;
/// A launch's arguments, held inline (the templates' kernels take at most 12).
pub type Args = ArrayVec<Arg, 12>;
/// A plan's launches, held inline (a template queues at most two).
pub type Launches = ArrayVec<Launch, 4>;

/// A kernel name from a literal.
pub fn kernel_name(s: &str) -> KernelName {
    KernelName::from(s).expect("kernel names are shorter than 40 bytes")
}

fn kname(args: std::fmt::Arguments<'_>) -> KernelName {
    let mut n = KernelName::new();
    std::fmt::write(&mut n, args).expect("kernel names are shorter than 40 bytes");
    n
}

fn one(l: Launch) -> Launches {
    let mut v = Launches::new();
    v.push(l);
    v
}

/// A kernel argument, as the kernel's parameter types take it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// `int64_t` (also `long long`, `size_t`).
    I64(i64),
    /// `int` (also `unsigned`; and `bool`, `char`, `short` from its low bytes).
    I32(i32),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
    /// A device pointer (0 is NULL).
    Ptr(u64),
}

impl Arg {
    /// The argument's bytes as the driver reads them from an 8-byte slot: a parameter
    /// of fewer bytes takes the first of these (little-endian).
    pub fn slot(self) -> u64 {
        match self {
            Arg::I64(v) => v as u64,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
            Arg::F64(v) => v.to_bits(),
            Arg::Ptr(p) => p,
        }
    }
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The kernel's (extern "C") name.
    pub kernel: KernelName,
    /// Grid.
    pub grid: (u32, u32, u32),
    /// Block.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory, bytes.
    pub smem: u32,
    /// Arguments, in order.
    pub args: Args,
}

/// What a plan asks of the device.
pub trait Device {
    /// Multiprocessors.
    fn sms(&self) -> i64;
    /// Resident blocks per multiprocessor of `kernel` with `threads` threads and `smem`
    /// bytes of dynamic shared memory (raising the kernel's limit first when `smem` is
    /// above 48 KiB); `None` when the driver cannot say.
    fn per_sm(&mut self, kernel: &str, threads: u32, smem: u32) -> Option<i32>;
    /// `bytes` of stream-ordered workspace from the launcher's private pool, freed after
    /// the launches that use it; `None` when it cannot be had (the plan then does not
    /// split).
    fn workspace(&mut self, bytes: usize) -> Option<u64>;
}

fn cdiv(x: i64, y: i64) -> i64 {
    (x + y - 1) / y
}

/// The `xcache-launch <what> key=value ...` line of a rendered template.
pub fn launch_line<'a>(source: &'a str, what: &str) -> Result<Vec<(&'a str, &'a str)>> {
    let prefix = format!("xcache-launch {what} ");
    let line = source
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "the template has no `xcache-launch {what}` line: xcache's launcher cannot launch it (use cuda_compiler=nvcc for a template of your own without one)"
            ))
        })?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect())
}

fn field<'a>(kv: &[(&'a str, &'a str)], name: &str) -> Result<&'a str> {
    kv.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::InvalidRequest(format!("the xcache-launch line lacks `{name}`")))
}

fn number(kv: &[(&str, &str)], name: &str) -> Result<i64> {
    field(kv, name)?.parse().map_err(|_| {
        Error::InvalidRequest(format!("the xcache-launch line's `{name}` is not a number"))
    })
}

fn numbers(s: &str, sep: char) -> Result<Vec<i64>> {
    s.split(sep)
        .map(|v| {
            v.parse()
                .map_err(|_| Error::InvalidRequest(format!("`{s}` in the xcache-launch line")))
        })
        .collect()
}

// --- elemwise ---------------------------------------------------------------------

/// `cuda/elemwise`'s launch data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemwisePlan {
    /// Elements per 16-byte vector.
    pub lanes: i64,
    /// Threads per block.
    pub threads: i64,
    /// Most resident blocks per multiprocessor the grid asks for.
    pub blocks_per_sm: i64,
}

impl ElemwisePlan {
    /// From the rendered source.
    pub fn parse(source: &str) -> Result<ElemwisePlan> {
        let kv = launch_line(source, "elemwise")?;
        Ok(ElemwisePlan {
            lanes: number(&kv, "lanes")?,
            threads: number(&kv, "threads")?,
            blocks_per_sm: number(&kv, "blocks_per_sm")?,
        })
    }

    /// As `xc_elemwise`: 16-byte vectors over the first `n / lanes * lanes` elements when
    /// every pointer is 16-byte aligned, scalars for the rest; grids of
    /// `min(work / threads, sms * blocks_per_sm)` blocks. `Err` for a NULL pointer.
    pub fn plan(&self, sms: i64, n: i64, inputs: &[u64], out: u64) -> Result<Launches> {
        if n == 0 {
            return Ok(Launches::new());
        }
        if out == 0 || inputs.contains(&0) {
            return Err(Error::InvalidRequest(
                "xc_elemwise: a pointer is NULL".into(),
            ));
        }
        let sms = if sms <= 0 { 32 } else { sms };
        let blocks = |work: i64| cdiv(work, self.threads).min(sms * self.blocks_per_sm) as u32;
        let align = inputs.iter().fold(out, |a, &p| a | p);
        let nv = if align % 16 == 0 { n / self.lanes } else { 0 };
        let mut v = Launches::new();
        let ptrs = || inputs.iter().map(|&p| Arg::Ptr(p));
        if nv > 0 {
            v.push(Launch {
                kernel: kernel_name("xc_vector"),
                grid: (blocks(nv), 1, 1),
                block: (self.threads as u32, 1, 1),
                smem: 0,
                args: std::iter::once(Arg::I64(nv))
                    .chain(ptrs())
                    .chain([Arg::Ptr(out)])
                    .collect(),
            });
        }
        let start = nv * self.lanes;
        if start < n {
            v.push(Launch {
                kernel: kernel_name("xc_scalar"),
                grid: (blocks(n - start), 1, 1),
                block: (self.threads as u32, 1, 1),
                smem: 0,
                args: [Arg::I64(start), Arg::I64(n)]
                    .into_iter()
                    .chain(ptrs())
                    .chain([Arg::Ptr(out)])
                    .collect(),
            });
        }
        Ok(v)
    }
}

// --- reduce -----------------------------------------------------------------------

/// `cuda/reduce`'s launch data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReducePlan {
    /// 1: along rows; 0: along the leading axis.
    pub axis: i64,
    /// Elements per 16-byte vector.
    pub vec: i64,
    /// Threads per block.
    pub threads: i64,
    /// Rows a team keeps in flight.
    pub unroll: i64,
    /// Bytes of one partial result.
    pub acc_bytes: i64,
}

/// The most rows `cuda/reduce` over axis 0 reduces with `xc_cols_few_*` (`XC_FEW_ROWS`).
const FEW_ROWS: i64 = 4;

/// The fallback the C launcher takes when the occupancy cannot be asked.
fn per_sm_or_4(d: &mut dyn Device, kernel: &str, threads: u32) -> i64 {
    match d.per_sm(kernel, threads, 0) {
        Some(b) if b > 0 => b as i64,
        _ => 4,
    }
}

impl ReducePlan {
    /// From the rendered source.
    pub fn parse(source: &str) -> Result<ReducePlan> {
        let kv = launch_line(source, "reduce")?;
        Ok(ReducePlan {
            axis: number(&kv, "axis")?,
            vec: number(&kv, "vec")?,
            threads: number(&kv, "threads")?,
            unroll: number(&kv, "unroll")?,
            acc_bytes: number(&kv, "acc")?,
        })
    }

    /// As `xc_reduce` (`xc_launch` for the template's axis).
    pub fn plan(
        &self,
        d: &mut dyn Device,
        rows: i64,
        cols: i64,
        input: u64,
        out: u64,
    ) -> Result<Launches> {
        if (if self.axis == 1 { rows } else { cols }) == 0 {
            return Ok(Launches::new()); // no outputs
        }
        if out == 0 || (input == 0 && rows > 0 && cols > 0) {
            return Err(Error::InvalidRequest("xc_reduce: a pointer is NULL".into()));
        }
        let sms = match d.sms() {
            s if s > 0 => s,
            _ => 32,
        };
        let vector = input.is_multiple_of(16) && cols % self.vec == 0;
        if self.axis == 1 {
            self.rows(d, sms, vector, rows, cols, input, out)
        } else {
            self.cols(d, sms, vector, rows, cols, input, out)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        d: &mut dyn Device,
        sms: i64,
        vector: bool,
        rows: i64,
        cols: i64,
        input: u64,
        out: u64,
    ) -> Result<Launches> {
        let t = self.threads as u32;
        // xc_launch_narrow: rows of fewer elements than a vector holds, whole rows to a
        // vector, over an aligned input.
        if input.is_multiple_of(16) && cols >= 1 && cols < self.vec && self.vec % cols == 0 {
            let kernel = kname(format_args!("xc_rows_narrow_{cols}"));
            let want = cdiv(rows / (self.vec / cols), self.threads * self.unroll);
            let cap = sms * per_sm_or_4(d, &kernel, t);
            return Ok(one(Launch {
                kernel,
                grid: (want.min(cap).max(1) as u32, 1, 1),
                block: (t, 1, 1),
                smem: 0,
                args: Args::from_iter([
                    Arg::I64(rows),
                    Arg::I64(cols),
                    Arg::Ptr(input),
                    Arg::Ptr(out),
                ]),
            }));
        }
        let units = if vector { cols / self.vec } else { cols };
        if units <= 256 {
            // xc_launch_team_for, xc_launch_team
            let team = [1, 2, 4, 8, 16]
                .into_iter()
                .find(|&w| units <= w)
                .unwrap_or(32);
            let kernel = kname(format_args!(
                "xc_rows_team_{team}_{}",
                if vector { "v" } else { "s" }
            ));
            let per_block = (self.threads / 32) * (32 / team) * self.unroll;
            let want = cdiv(rows, per_block);
            let cap = sms * per_sm_or_4(d, &kernel, t);
            return Ok(one(Launch {
                kernel,
                grid: (want.min(cap).max(1) as u32, 1, 1),
                block: (t, 1, 1),
                smem: 0,
                args: Args::from_iter([
                    Arg::I64(rows),
                    Arg::I64(cols),
                    Arg::Ptr(input),
                    Arg::Ptr(out),
                ]),
            }));
        }
        self.rows_long(d, sms, rows, cols, input, out)
    }

    /// `xc_launch_rows_long`: a block per long row (for axis 0, a single column, a
    /// contiguous vector), each row split into chunks when the rows alone leave
    /// resident blocks idle, keeping a chunk at >= 8 vectors per thread.
    fn rows_long(
        &self,
        d: &mut dyn Device,
        sms: i64,
        rows: i64,
        cols: i64,
        input: u64,
        out: u64,
    ) -> Result<Launches> {
        let t = self.threads as u32;
        let slots = sms * per_sm_or_4(d, "xc_rows_block_split", t);
        let max_units = cols / self.vec;
        let mut chunks = 1;
        if rows < 2 * slots {
            chunks = cdiv(2 * slots, rows)
                .min(max_units / (8 * self.threads))
                .max(1);
        }
        let part = if chunks > 1 {
            d.workspace((rows * chunks * self.acc_bytes) as usize)
        } else {
            None
        };
        if part.is_none() {
            chunks = 1;
        }
        let chunk_units = cdiv(max_units, chunks);
        let grid = (rows * chunks).min(slots) as u32;
        let block = (t, 1, 1);
        Ok(match part {
            Some(p) => Launches::from_iter([
                Launch {
                    kernel: kernel_name("xc_rows_block_split"),
                    grid: (grid, 1, 1),
                    block,
                    smem: 0,
                    args: Args::from_iter([
                        Arg::I64(rows),
                        Arg::I64(cols),
                        Arg::Ptr(input),
                        Arg::Ptr(out),
                        Arg::Ptr(p),
                        Arg::I64(chunks),
                        Arg::I64(chunk_units),
                    ]),
                },
                Launch {
                    kernel: kernel_name("xc_rows_finish"),
                    grid: (rows.min(slots) as u32, 1, 1),
                    block,
                    smem: 0,
                    args: Args::from_iter([
                        Arg::I64(rows),
                        Arg::I64(cols),
                        Arg::I64(chunks),
                        Arg::Ptr(p),
                        Arg::Ptr(out),
                    ]),
                },
            ]),
            None => one(Launch {
                kernel: kernel_name("xc_rows_block"),
                grid: (grid, 1, 1),
                block,
                smem: 0,
                args: Args::from_iter([
                    Arg::I64(rows),
                    Arg::I64(cols),
                    Arg::Ptr(input),
                    Arg::Ptr(out),
                    Arg::Ptr(0),
                    Arg::I64(1),
                    Arg::I64(chunk_units),
                ]),
            }),
        })
    }

    /// `xc_cols_block`: (256 / ty, ty) for a (rows x units) problem.
    fn cols_block(&self, rows: i64, units: i64) -> (u32, u32) {
        let mut tx = 32;
        while tx > 1 && tx / 2 >= units {
            tx /= 2;
        }
        let mut ty = self.threads / tx;
        while ty > 1 && ty > rows {
            ty /= 2;
        }
        ((self.threads / ty) as u32, ty as u32)
    }

    #[allow(clippy::too_many_arguments)]
    fn cols(
        &self,
        d: &mut dyn Device,
        sms: i64,
        vector: bool,
        rows: i64,
        cols: i64,
        input: u64,
        out: u64,
    ) -> Result<Launches> {
        // A single column is a contiguous vector: reduced as a single long row is.
        if cols == 1 {
            return self.rows_long(d, sms, 1, rows, input, out);
        }
        let units = if vector { cols / self.vec } else { cols };
        let v = if vector { "v" } else { "s" };
        if rows <= FEW_ROWS {
            let kernel = kname(format_args!("xc_cols_few_{v}"));
            let want = cdiv(units, self.threads * self.unroll);
            let cap = sms * per_sm_or_4(d, &kernel, self.threads as u32);
            return Ok(one(Launch {
                kernel,
                grid: (want.min(cap).max(1) as u32, 1, 1),
                block: (self.threads as u32, 1, 1),
                smem: 0,
                args: Args::from_iter([
                    Arg::I64(rows),
                    Arg::I64(cols),
                    Arg::Ptr(input),
                    Arg::Ptr(out),
                ]),
            }));
        }
        let (tx, ty) = self.cols_block(rows, units);
        let col_blocks = cdiv(units, tx as i64);
        let slots = sms
            * per_sm_or_4(
                d,
                &kname(format_args!("xc_cols_{v}_split")),
                self.threads as u32,
            );
        // Enough blocks for two rounds of resident blocks, each thread keeping >= 16 rows.
        let mut chunks = 1;
        if col_blocks < 2 * slots {
            let most = (rows / (16 * ty as i64)).min(65535);
            chunks = std::cmp::max(1, cdiv(2 * slots, col_blocks).min(most));
        }
        let part = if chunks > 1 {
            d.workspace((chunks * cols * self.acc_bytes) as usize)
        } else {
            None
        };
        if part.is_none() {
            chunks = 1;
        }
        let rows_per_chunk = cdiv(rows, chunks).max(1);
        let chunks = cdiv(rows, rows_per_chunk).max(1);
        let grid = (col_blocks as u32, chunks as u32, 1);
        let block = (tx, ty, 1);
        Ok(match part {
            Some(p) => {
                let (fx, fy) = self.cols_block(chunks, cols);
                Launches::from_iter([
                    Launch {
                        kernel: kname(format_args!("xc_cols_{v}_split")),
                        grid,
                        block,
                        smem: 0,
                        args: Args::from_iter([
                            Arg::I64(rows),
                            Arg::I64(cols),
                            Arg::Ptr(input),
                            Arg::Ptr(out),
                            Arg::Ptr(p),
                            Arg::I64(rows_per_chunk),
                        ]),
                    },
                    Launch {
                        kernel: kernel_name("xc_cols_finish"),
                        grid: (cdiv(cols, fx as i64) as u32, 1, 1),
                        block: (fx, fy, 1),
                        smem: 0,
                        args: Args::from_iter([
                            Arg::I64(rows),
                            Arg::I64(cols),
                            Arg::I64(chunks),
                            Arg::Ptr(p),
                            Arg::Ptr(out),
                        ]),
                    },
                ])
            }
            None => one(Launch {
                kernel: kname(format_args!("xc_cols_{v}")),
                grid,
                block,
                smem: 0,
                args: Args::from_iter([
                    Arg::I64(rows),
                    Arg::I64(cols),
                    Arg::Ptr(input),
                    Arg::Ptr(out),
                    Arg::Ptr(0),
                    Arg::I64(rows.max(1)),
                ]),
            }),
        })
    }
}

// --- gemm -------------------------------------------------------------------------

/// One tile configuration of `cuda/gemm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmConfig {
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory, bytes.
    pub smem: u32,
    /// Block tile rows.
    pub bm: i64,
    /// Block tile columns.
    pub bn: i64,
}

/// `cuda/gemm`'s launch data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemmPlan {
    /// Tensor cores (needs compute capability 8.0).
    pub tensor_cores: bool,
    /// The configurations, in the template's order.
    pub configs: Vec<GemmConfig>,
    /// The size class: (tile m, tile n, num, den, large, small).
    pub pick: [i64; 6],
    /// Elements per 16-byte chunk of A and B (their rows must hold whole chunks for the
    /// 16-byte-load kernels).
    pub chunk: i64,
}

/// Why a GEMM cannot be launched on this device.
pub const NEEDS_SM80: &str = "needs a GPU of compute capability 8.0 or later";

impl GemmPlan {
    /// From the rendered source.
    pub fn parse(source: &str) -> Result<GemmPlan> {
        let kv = launch_line(source, "gemm")?;
        let configs = field(&kv, "configs")?
            .split(',')
            .map(|c| {
                let v = numbers(c, ':')?;
                match v[..] {
                    [threads, smem, bm, bn] => Ok(GemmConfig {
                        threads: threads as u32,
                        smem: smem as u32,
                        bm,
                        bn,
                    }),
                    _ => Err(Error::InvalidRequest(format!(
                        "gemm configuration `{c}` in the xcache-launch line"
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let pick: [i64; 6] = numbers(field(&kv, "pick")?, ',')?
            .try_into()
            .map_err(|_| Error::InvalidRequest("gemm `pick` needs six numbers".into()))?;
        let plan = GemmPlan {
            tensor_cores: field(&kv, "kind")? == "tc",
            configs,
            pick,
            chunk: number(&kv, "chunk")?,
        };
        let n = plan.configs.len() as i64;
        if n == 0 || !(0..n).contains(&pick[4]) || !(0..n).contains(&pick[5]) {
            return Err(Error::InvalidRequest(
                "gemm: the xcache-launch line's size class names no configuration".into(),
            ));
        }
        Ok(plan)
    }

    /// The configuration the size class picks (`xc_pick`).
    pub fn pick(&self, m: i64, n: i64, sms: i64) -> usize {
        let [pm, pn, num, den, large, small] = self.pick;
        if cdiv(m, pm) * cdiv(n, pn) * num >= den * sms {
            large as usize
        } else {
            small as usize
        }
    }

    /// As `xc_gemm_config(config, ...)`: `config` `None` picks by size. `major` is the
    /// device's compute capability. `Err` for bad sizes, NULL pointers, an unknown
    /// config, a tensor-core GEMM on an older GPU, or shared memory that does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &self,
        d: &mut dyn Device,
        major: i32,
        config: Option<usize>,
        (m, n, k): (i64, i64, i64),
        (a, b, bias, c): (u64, u64, u64, u64),
    ) -> Result<Launches> {
        let max = i32::MAX as i64;
        if m < 0 || n < 0 || k < 0 || m > max || n > max || k > max {
            return Err(Error::InvalidRequest(format!(
                "gemm {m}x{n}x{k}: a size is negative or too large"
            )));
        }
        if config.is_some_and(|c| c >= self.configs.len()) {
            return Err(Error::InvalidRequest(format!(
                "gemm: no configuration {}; there are {}",
                config.unwrap_or(0),
                self.configs.len()
            )));
        }
        if m == 0 || n == 0 {
            return Ok(Launches::new());
        }
        if c == 0 || (k > 0 && (a == 0 || b == 0)) {
            return Err(Error::InvalidRequest("xc_gemm: a pointer is NULL".into()));
        }
        let sms = match d.sms() {
            s if s > 0 => s,
            _ => 32,
        };
        let vec = if self.tensor_cores {
            if major < 8 {
                return Err(Error::Cuda {
                    what: "launching a tensor-core gemm".into(),
                    code: crate::cuda::driver::ERROR_NOT_SUPPORTED,
                    message: NEEDS_SM80.into(),
                });
            }
            k % self.chunk == 0
                && n % self.chunk == 0
                && a % 16 == 0
                && b % 16 == 0
                && c % 8 == 0
                && bias % 8 == 0
        } else {
            k % self.chunk == 0 && n % self.chunk == 0 && a % 16 == 0 && b % 16 == 0 && c % 16 == 0
        };
        let i = config.unwrap_or_else(|| self.pick(m, n, sms));
        let cfg = self.configs[i];
        let kernel = kname(format_args!("xc_gemm_c{i}_{}", if vec { "v" } else { "s" }));
        let tiles = cdiv(m, cfg.bm) * cdiv(n, cfg.bn);
        // xc_run, xc_prepare
        let mut per_sm = d.per_sm(&kernel, cfg.threads, cfg.smem).unwrap_or(0) as i64;
        if per_sm <= 0 {
            if self.tensor_cores {
                return Err(Error::Cuda {
                    what: format!("launching {kernel}"),
                    code: 9, // cudaErrorInvalidConfiguration, as the C launcher returns
                    message: format!(
                        "its {} bytes of shared memory do not fit this GPU",
                        cfg.smem
                    ),
                });
            }
            per_sm = 1;
        }
        let cap = sms * per_sm * 64; // the kernel loops past it
        Ok(one(Launch {
            kernel,
            grid: (tiles.min(cap) as u32, 1, 1),
            block: (cfg.threads, 1, 1),
            smem: cfg.smem,
            args: Args::from_iter([
                Arg::I32(m as i32),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::Ptr(a),
                Arg::Ptr(b),
                Arg::Ptr(bias),
                Arg::Ptr(c),
            ]),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with 132 multiprocessors whose kernels all fit `per_sm` blocks, and
    /// whose workspace comes from a counter.
    struct Fake {
        per_sm: i32,
        next: u64,
        pool: bool,
    }

    impl Device for Fake {
        fn sms(&self) -> i64 {
            132
        }
        fn per_sm(&mut self, _: &str, _: u32, _: u32) -> Option<i32> {
            Some(self.per_sm)
        }
        fn workspace(&mut self, bytes: usize) -> Option<u64> {
            if !self.pool {
                return None;
            }
            let p = self.next;
            self.next += bytes as u64;
            Some(p)
        }
    }

    fn fake() -> Fake {
        Fake {
            per_sm: 8,
            next: 1 << 40,
            pool: true,
        }
    }

    #[test]
    fn elemwise_splits_vectors_and_a_scalar_tail() {
        let p = ElemwisePlan {
            lanes: 4,
            threads: 256,
            blocks_per_sm: 16,
        };
        let l = p.plan(132, 1003, &[0x1000, 0x2000], 0x3000).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].kernel.as_str(), "xc_vector");
        assert_eq!(l[0].args[0], Arg::I64(250));
        assert_eq!(l[0].grid, (1, 1, 1));
        assert_eq!(l[1].kernel.as_str(), "xc_scalar");
        assert_eq!(&l[1].args[..2], &[Arg::I64(1000), Arg::I64(1003)]);
        // Misaligned: scalars only; grids are capped at 16 blocks per multiprocessor.
        let l = p.plan(132, 1 << 28, &[0x1004], 0x3000).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel.as_str(), "xc_scalar");
        assert_eq!(l[0].grid.0, 132 * 16);
        assert!(p.plan(132, 0, &[0], 0).unwrap().is_empty());
        assert!(p.plan(132, 4, &[0], 0x10).is_err());
    }

    fn reduce(axis: i64) -> ReducePlan {
        ReducePlan {
            axis,
            vec: 4,
            threads: 256,
            unroll: 4,
            acc_bytes: 8,
        }
    }

    #[test]
    fn reduce_rows_by_teams_blocks_and_splits() {
        let mut d = fake();
        let r = reduce(1);
        let l = r.plan(&mut d, 4097, 16, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_team_4_v");
        // 8 warps x 8 rows per warp x 4 in flight per block step: 256 rows a block.
        assert_eq!(l[0].grid.0, 17);
        let l = r.plan(&mut d, 4097, 15, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_team_16_s");
        let l = r.plan(&mut d, 5, 0, 0, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_team_1_v");
        // One long row: split, then finished.
        let l = r.plan(&mut d, 1, 1 << 28, 0x1000, 0x9000).unwrap();
        assert_eq!(
            l.iter().map(|x| x.kernel.as_str()).collect::<Vec<_>>(),
            ["xc_rows_block_split", "xc_rows_finish"]
        );
        assert_eq!(l[0].args[5], Arg::I64(2 * 132 * 8));
        // Many long rows: no split.
        let l = r.plan(&mut d, 4096, 65536, 0x1000, 0x9000).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel.as_str(), "xc_rows_block");
        assert_eq!(l[0].grid.0, 132 * 8);
        // No pool: no split.
        let mut np = Fake {
            pool: false,
            ..fake()
        };
        let l = r.plan(&mut np, 1, 1 << 28, 0x1000, 0x9000).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].args[5], Arg::I64(1));
        assert!(r.plan(&mut d, 0, 5, 0, 0).unwrap().is_empty());
        // Rows of 1 or 2 float32s over an aligned input: whole rows to a 16-byte vector,
        // 4 vectors a thread; misaligned, a team of lanes per row.
        let l = r.plan(&mut d, 1 << 27, 2, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_narrow_2");
        assert_eq!(l[0].grid.0, 132 * 8);
        let l = r.plan(&mut d, 9, 1, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_narrow_1");
        assert_eq!(l[0].grid.0, 1);
        let l = r.plan(&mut d, 9, 2, 0x1004, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_team_2_s");
        let l = r.plan(&mut d, 9, 3, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_rows_team_4_s");
    }

    #[test]
    fn reduce_columns_shape_their_blocks() {
        let mut d = fake();
        let r = reduce(0);
        assert_eq!(r.cols_block(1 << 20, 64), (32, 8));
        assert_eq!(r.cols_block(3, 1), (128, 2)); // short: shallower and wider
                                                  // 512 column blocks: too few for 2 x 132 x 8 resident, so 5 chunks of rows.
        let l = r.plan(&mut d, 4096, 65536, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_cols_v_split");
        assert_eq!(l[0].grid, (512, 5, 1));
        assert_eq!(l[1].kernel.as_str(), "xc_cols_finish");
        let l = r.plan(&mut d, 64, 1 << 22, 0x1000, 0x9000).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel.as_str(), "xc_cols_v");
        let l = r.plan(&mut d, 1 << 24, 16, 0x1000, 0x9000).unwrap();
        assert_eq!(
            l.iter().map(|x| x.kernel.as_str()).collect::<Vec<_>>(),
            ["xc_cols_v_split", "xc_cols_finish"]
        );
        let l = r.plan(&mut d, 5, 7, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_cols_s");
        assert!(r.plan(&mut d, 5, 0, 0, 0).unwrap().is_empty());
        // Up to 4 rows: a row of threads going down them, 4 units a thread.
        let l = r.plan(&mut d, 2, 1 << 27, 0x1000, 0x9000).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel.as_str(), "xc_cols_few_v");
        assert_eq!((l[0].grid, l[0].block), ((132 * 8, 1, 1), (256, 1, 1)));
        let l = r.plan(&mut d, 1, 4099, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_cols_few_s");
        assert_eq!(l[0].grid.0, 5);
        let l = r.plan(&mut d, 0, 8, 0x1000, 0x9000).unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_cols_few_v");
        // A single column: a single long row, split and finished.
        let l = r.plan(&mut d, 1 << 28, 1, 0x1000, 0x9000).unwrap();
        assert_eq!(
            l.iter().map(|x| x.kernel.as_str()).collect::<Vec<_>>(),
            ["xc_rows_block_split", "xc_rows_finish"]
        );
        assert_eq!(&l[0].args[..2], &[Arg::I64(1), Arg::I64(1 << 28)]);
    }

    const GEMM_LINE: &str = "/*\nxcache-launch gemm kind=simt configs=256:16896:128:128,128:8704:64:64 pick=128,128,1,1,0,1 chunk=4\n*/";

    #[test]
    fn gemm_reads_its_configurations_and_picks_by_size() {
        let p = GemmPlan::parse(GEMM_LINE).unwrap();
        assert!(!p.tensor_cores);
        assert_eq!(p.configs.len(), 2);
        assert_eq!(p.configs[1].smem, 8704);
        let mut d = fake();
        let l = p
            .plan(&mut d, 9, None, (4096, 4096, 4096), (16, 32, 0, 48))
            .unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_gemm_c0_v");
        assert_eq!(l[0].grid.0, 32 * 32);
        assert_eq!(l[0].smem, 16896);
        let l = p
            .plan(&mut d, 9, None, (100, 100, 7), (16, 32, 0, 48))
            .unwrap();
        assert_eq!(l[0].kernel.as_str(), "xc_gemm_c1_s");
        assert!(p
            .plan(&mut d, 9, Some(2), (1, 1, 1), (16, 32, 0, 48))
            .is_err());
        assert!(p.plan(&mut d, 9, None, (1, 1, 1), (16, 0, 0, 48)).is_err());
        assert!(p
            .plan(&mut d, 9, None, (0, 1, 1), (0, 0, 0, 0))
            .unwrap()
            .is_empty());
        let tc = GemmPlan::parse(&GEMM_LINE.replace("simt", "tc")).unwrap();
        let e = tc
            .plan(&mut d, 7, None, (8, 8, 8), (16, 32, 0, 48))
            .unwrap_err();
        assert!(e.to_string().contains(NEEDS_SM80), "{e}");
        assert!(GemmPlan::parse("no line").is_err());
    }
}

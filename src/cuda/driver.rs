//! The CUDA driver API, through `libcuda.so.1` loaded at run time (no link-time CUDA
//! dependency): contexts, device memory, modules (`cuModuleLoadData` of a cubin or
//! PTX), functions, occupancy and `cuLaunchKernel`. What xcache's launcher
//! ([`crate::cuda::launch`]) and the [`crate::cuda`] handles stand on.
//!
//! **Contexts.** xcache uses whatever context is current on the calling thread; where
//! none is, it makes the device's *primary* context current, the one the CUDA runtime
//! (CuPy, PyTorch, nvcc-built launchers) uses too, so device pointers pass freely
//! between them. A module is loaded once per context it is used in.

// The handles (contexts, modules, functions, pools) are opaque pointers that only the
// driver interprets; Rust never dereferences them, and the driver checks them.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// `CUresult`.
pub type CuResult = c_int;
/// `CUcontext`.
pub type Context = *mut c_void;
/// `CUmodule`.
pub type Module = *mut c_void;
/// `CUfunction`.
pub type Function = *mut c_void;
/// `CUstream` (null: the legacy default stream).
pub type Stream = *mut c_void;
/// `CUdeviceptr`.
pub type DevicePtr = u64;
/// `CUmemoryPool`.
pub type MemPool = *mut c_void;

/// `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`.
pub const ATTR_MULTIPROCESSOR_COUNT: c_int = 16;
/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`.
pub const ATTR_CC_MAJOR: c_int = 75;
/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR`.
pub const ATTR_CC_MINOR: c_int = 76;
/// `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`.
pub const ATTR_MEMORY_POOLS_SUPPORTED: c_int = 115;
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const FUNC_ATTR_MAX_DYNAMIC_SHARED: c_int = 8;
/// `CUDA_ERROR_INVALID_VALUE`.
pub const ERROR_INVALID_VALUE: CuResult = 1;
/// `CUDA_ERROR_NOT_SUPPORTED`.
pub const ERROR_NOT_SUPPORTED: CuResult = 801;

/// `CUmemPoolProps` (CUDA 11.2 and later; the reserved bytes keep its size).
#[repr(C)]
struct MemPoolProps {
    alloc_type: c_int,
    handle_types: c_int,
    location_type: c_int,
    location_id: c_int,
    win32_security_attributes: *mut c_void,
    max_size: usize,
    usage: u16,
    gpu_direct_rdma_capable: u8,
    reserved: [u8; 53],
}

type Fn0 = unsafe extern "C" fn() -> CuResult;
type FnU = unsafe extern "C" fn(c_uint) -> CuResult;
type FnPi = unsafe extern "C" fn(*mut c_int) -> CuResult;
type FnDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type FnDeviceName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult;
type FnDeviceAttr = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult;
type FnRetain = unsafe extern "C" fn(*mut Context, c_int) -> CuResult;
type FnCtxGet = unsafe extern "C" fn(*mut Context) -> CuResult;
type FnCtxSet = unsafe extern "C" fn(Context) -> CuResult;
type FnModuleLoadData = unsafe extern "C" fn(*mut Module, *const c_void) -> CuResult;
type FnModuleUnload = unsafe extern "C" fn(Module) -> CuResult;
type FnModuleGetFunction = unsafe extern "C" fn(*mut Function, Module, *const c_char) -> CuResult;
type FnFuncSetAttr = unsafe extern "C" fn(Function, c_int, c_int) -> CuResult;
type FnOccupancy = unsafe extern "C" fn(*mut c_int, Function, c_int, usize) -> CuResult;
type FnLaunch = unsafe extern "C" fn(
    Function,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    Stream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;
type FnMemAlloc = unsafe extern "C" fn(*mut DevicePtr, usize) -> CuResult;
type FnMemFree = unsafe extern "C" fn(DevicePtr) -> CuResult;
type FnHtoD = unsafe extern "C" fn(DevicePtr, *const c_void, usize) -> CuResult;
type FnDtoH = unsafe extern "C" fn(*mut c_void, DevicePtr, usize) -> CuResult;
type FnErrStr = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;
type FnPoolCreate = unsafe extern "C" fn(*mut MemPool, *const MemPoolProps) -> CuResult;
type FnPoolSetAttr = unsafe extern "C" fn(MemPool, c_int, *mut c_void) -> CuResult;
type FnAllocFromPool = unsafe extern "C" fn(*mut DevicePtr, usize, MemPool, Stream) -> CuResult;
type FnFreeAsync = unsafe extern "C" fn(DevicePtr, Stream) -> CuResult;
type FnStreamCreate = unsafe extern "C" fn(*mut Stream, c_uint) -> CuResult;
type FnStream = unsafe extern "C" fn(Stream) -> CuResult;

/// libcuda's entry points, loaded and initialised (`cuInit`) once per process.
pub struct Driver {
    _lib: libloading::Library,
    driver_get_version: FnPi,
    device_get: FnDeviceGet,
    device_get_name: FnDeviceName,
    device_get_attribute: FnDeviceAttr,
    primary_ctx_retain: FnRetain,
    ctx_get_current: FnCtxGet,
    ctx_set_current: FnCtxSet,
    ctx_push: FnCtxSet,
    ctx_pop: FnCtxGet,
    ctx_get_device: FnPi,
    ctx_synchronize: Fn0,
    module_load_data: FnModuleLoadData,
    module_unload: FnModuleUnload,
    module_get_function: FnModuleGetFunction,
    func_set_attribute: FnFuncSetAttr,
    occupancy: FnOccupancy,
    launch_kernel: FnLaunch,
    mem_alloc: FnMemAlloc,
    mem_free: FnMemFree,
    memcpy_htod: FnHtoD,
    memcpy_dtoh: FnDtoH,
    get_error_name: FnErrStr,
    get_error_string: FnErrStr,
    pool_create: Option<FnPoolCreate>,
    pool_set_attribute: Option<FnPoolSetAttr>,
    alloc_from_pool: Option<FnAllocFromPool>,
    free_async: Option<FnFreeAsync>,
    stream_create: FnStreamCreate,
    stream_destroy: FnStream,
    stream_synchronize: FnStream,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver(libcuda.so.1)")
    }
}

// SAFETY: the driver API is thread-safe; the struct holds only function pointers.
unsafe impl Send for Driver {}
// SAFETY: as above.
unsafe impl Sync for Driver {}

impl Driver {
    /// The driver, loaded and initialised once; `Err` says why there is none.
    pub fn get() -> std::result::Result<&'static Driver, String> {
        static DRIVER: OnceLock<std::result::Result<Driver, String>> = OnceLock::new();
        DRIVER
            .get_or_init(Driver::open)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn open() -> std::result::Result<Driver, String> {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, as any CUDA
        // program does; each symbol is read with the driver API's documented signature
        // (the `_v2` names are the ones cuda.h maps the plain names to).
        unsafe {
            let lib = libloading::Library::new("libcuda.so.1")
                .map_err(|_| "no NVIDIA driver (libcuda.so.1 cannot be loaded)".to_string())?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| format!("libcuda.so.1 lacks {}: {e}", $name))?
                };
            }
            macro_rules! opt {
                ($name:literal) => {
                    lib.get(concat!($name, "\0").as_bytes()).ok().map(|s| *s)
                };
            }
            let init: FnU = sym!("cuInit");
            let d = Driver {
                driver_get_version: sym!("cuDriverGetVersion"),
                device_get: sym!("cuDeviceGet"),
                device_get_name: sym!("cuDeviceGetName"),
                device_get_attribute: sym!("cuDeviceGetAttribute"),
                primary_ctx_retain: sym!("cuDevicePrimaryCtxRetain"),
                ctx_get_current: sym!("cuCtxGetCurrent"),
                ctx_set_current: sym!("cuCtxSetCurrent"),
                ctx_push: sym!("cuCtxPushCurrent_v2"),
                ctx_pop: sym!("cuCtxPopCurrent_v2"),
                ctx_get_device: sym!("cuCtxGetDevice"),
                ctx_synchronize: sym!("cuCtxSynchronize"),
                module_load_data: sym!("cuModuleLoadData"),
                module_unload: sym!("cuModuleUnload"),
                module_get_function: sym!("cuModuleGetFunction"),
                func_set_attribute: sym!("cuFuncSetAttribute"),
                occupancy: sym!("cuOccupancyMaxActiveBlocksPerMultiprocessor"),
                launch_kernel: sym!("cuLaunchKernel"),
                mem_alloc: sym!("cuMemAlloc_v2"),
                mem_free: sym!("cuMemFree_v2"),
                memcpy_htod: sym!("cuMemcpyHtoD_v2"),
                memcpy_dtoh: sym!("cuMemcpyDtoH_v2"),
                get_error_name: sym!("cuGetErrorName"),
                get_error_string: sym!("cuGetErrorString"),
                pool_create: opt!("cuMemPoolCreate"),
                pool_set_attribute: opt!("cuMemPoolSetAttribute"),
                alloc_from_pool: opt!("cuMemAllocFromPoolAsync"),
                free_async: opt!("cuMemFreeAsync"),
                stream_create: sym!("cuStreamCreate"),
                stream_destroy: sym!("cuStreamDestroy_v2"),
                stream_synchronize: sym!("cuStreamSynchronize"),
                _lib: lib,
            };
            let rc = init(0);
            if rc != 0 {
                return Err(format!(
                    "cuInit failed: {} (100: no device; 999: unknown)",
                    d.describe(rc)
                ));
            }
            Ok(d)
        }
    }

    /// `CUDA_ERROR_X (N): text`.
    pub fn describe(&self, rc: CuResult) -> String {
        let mut name: *const c_char = std::ptr::null();
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: valid out-pointers; the driver returns static strings or an error.
        unsafe {
            (self.get_error_name)(rc, &mut name);
            (self.get_error_string)(rc, &mut text);
        }
        let s = |p: *const c_char| {
            if p.is_null() {
                None
            } else {
                // SAFETY: a static NUL-terminated string from the driver.
                Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            }
        };
        match (s(name), s(text)) {
            (Some(n), Some(t)) => format!("{n} ({rc}): {t}"),
            _ => format!("CUDA driver error {rc}"),
        }
    }

    /// `Ok` for success, else [`Error::Cuda`] saying what was being done.
    pub fn check(&self, rc: CuResult, what: impl FnOnce() -> String) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        Err(Error::Cuda {
            what: what(),
            code: rc,
            message: self.describe(rc),
        })
    }

    /// The CUDA version the driver supports (`13000`).
    pub fn version(&self) -> i32 {
        let mut v = 0;
        // SAFETY: a valid out-pointer.
        unsafe { (self.driver_get_version)(&mut v) };
        v
    }

    /// The context current on this thread, making `fallback`'s primary context current
    /// when there is none.
    pub fn enter(&self, fallback: Context) -> Result<Context> {
        let mut cur: Context = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.ctx_get_current)(&mut cur) };
        self.check(rc, || "asking for the current CUDA context".into())?;
        if !cur.is_null() {
            return Ok(cur);
        }
        // SAFETY: a context retained by `primary_context`, never released.
        let rc = unsafe { (self.ctx_set_current)(fallback) };
        self.check(rc, || "making the primary CUDA context current".into())?;
        Ok(fallback)
    }

    /// The device of the current context, or `ordinal` when none is current; and that
    /// device's primary context, retained (for the life of the process, as the CUDA
    /// runtime retains it).
    pub fn primary_context(&self, ordinal: i32) -> Result<(i32, Context)> {
        let mut cur: Context = std::ptr::null_mut();
        // SAFETY: valid out-pointers.
        unsafe { (self.ctx_get_current)(&mut cur) };
        let mut dev = 0;
        let have = !cur.is_null() && unsafe { (self.ctx_get_device)(&mut dev) } == 0;
        if !have {
            // SAFETY: a valid out-pointer.
            let rc = unsafe { (self.device_get)(&mut dev, ordinal) };
            self.check(rc, || format!("opening GPU {ordinal}"))?;
        }
        let mut ctx: Context = std::ptr::null_mut();
        // SAFETY: a valid device and out-pointer.
        let rc = unsafe { (self.primary_ctx_retain)(&mut ctx, dev) };
        self.check(rc, || format!("retaining the primary context of GPU {dev}"))?;
        Ok((dev, ctx))
    }

    /// The current context's device.
    pub fn current_device(&self) -> Result<i32> {
        let mut dev = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.ctx_get_device)(&mut dev) };
        self.check(rc, || "asking the current context's device".into())?;
        Ok(dev)
    }

    /// A device attribute.
    pub fn attribute(&self, dev: i32, attr: c_int) -> Result<i32> {
        let mut v = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.device_get_attribute)(&mut v, attr, dev) };
        self.check(rc, || format!("reading attribute {attr} of GPU {dev}"))?;
        Ok(v)
    }

    /// `sm_90` for GPU `ordinal` (compute capability 9.0).
    pub fn arch(&self, ordinal: i32) -> Result<String> {
        let mut dev = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.device_get)(&mut dev, ordinal) };
        self.check(rc, || format!("opening GPU {ordinal}"))?;
        Ok(format!(
            "sm_{}{}",
            self.attribute(dev, ATTR_CC_MAJOR)?,
            self.attribute(dev, ATTR_CC_MINOR)?
        ))
    }

    /// The device's marketing name.
    pub fn device_name(&self, dev: i32) -> Result<String> {
        let mut name = [0 as c_char; 256];
        // SAFETY: a buffer of the length given.
        let rc = unsafe { (self.device_get_name)(name.as_mut_ptr(), 256, dev) };
        self.check(rc, || format!("reading the name of GPU {dev}"))?;
        // SAFETY: NUL-terminated by the driver.
        Ok(unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// Waits for all work of the current context.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: no arguments.
        let rc = unsafe { (self.ctx_synchronize)() };
        self.check(rc, || "synchronising".into())
    }

    /// A new stream of the current context that does not synchronise with the legacy
    /// default stream (`CU_STREAM_NON_BLOCKING`).
    pub fn create_stream(&self) -> Result<Stream> {
        let mut s: Stream = std::ptr::null_mut();
        // SAFETY: an out-pointer and a flag.
        let rc = unsafe { (self.stream_create)(&mut s, 1) };
        self.check(rc, || "creating a stream".into())?;
        Ok(s)
    }

    /// Waits for the work queued on `stream`.
    pub fn synchronize_stream(&self, stream: Stream) -> Result<()> {
        // SAFETY: a stream handle (NULL is the legacy default stream).
        let rc = unsafe { (self.stream_synchronize)(stream) };
        self.check(rc, || "synchronising a stream".into())
    }

    /// Destroys `stream` once its queued work is done.
    pub fn destroy_stream(&self, stream: Stream) {
        // SAFETY: a stream this process created, not used after this call.
        unsafe { (self.stream_destroy)(stream) };
    }

    /// `bytes` of device memory in the current context.
    pub fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let mut p: DevicePtr = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.mem_alloc)(&mut p, bytes) };
        self.check(rc, || format!("allocating {bytes} bytes on the GPU"))?;
        Ok(p)
    }

    /// Frees device memory (errors ignored: it runs in destructors).
    pub fn free(&self, p: DevicePtr) {
        // SAFETY: memory from `alloc`, freed once.
        unsafe { (self.mem_free)(p) };
    }

    /// Copies host bytes to the device (synchronous).
    ///
    /// # Safety
    /// `dst` must address `bytes` bytes of device memory, `src` as many host bytes.
    pub unsafe fn copy_to_device(
        &self,
        dst: DevicePtr,
        src: *const c_void,
        bytes: usize,
    ) -> Result<()> {
        let rc = (self.memcpy_htod)(dst, src, bytes);
        self.check(rc, || "copying to the GPU".into())
    }

    /// Copies device bytes to the host (waits for the default stream's work first).
    ///
    /// # Safety
    /// `src` must address `bytes` bytes of device memory, `dst` as many host bytes.
    pub unsafe fn copy_to_host(
        &self,
        dst: *mut c_void,
        src: DevicePtr,
        bytes: usize,
    ) -> Result<()> {
        let rc = (self.memcpy_dtoh)(dst, src, bytes);
        self.check(rc, || "copying from the GPU".into())
    }

    /// Loads a cubin or NUL-terminated PTX into the current context.
    pub fn load_module(&self, image: &[u8]) -> Result<Module> {
        let mut m: Module = std::ptr::null_mut();
        // SAFETY: the image is a whole cubin or NUL-terminated PTX (from NVRTC, hash
        // checked), alive for the call.
        let rc = unsafe { (self.module_load_data)(&mut m, image.as_ptr().cast()) };
        self.check(rc, || "loading a CUDA module (cuModuleLoadData)".into())?;
        Ok(m)
    }

    /// Unloads `m` from `ctx` (errors ignored: it runs in destructors).
    pub fn unload_module(&self, ctx: Context, m: Module) {
        // SAFETY: `m` was loaded in `ctx`; the context is pushed for the call and popped.
        unsafe {
            if (self.ctx_push)(ctx) == 0 {
                (self.module_unload)(m);
                let mut popped: Context = std::ptr::null_mut();
                (self.ctx_pop)(&mut popped);
            }
        }
    }

    /// A kernel of a module by its (extern "C") name.
    pub fn function(&self, m: Module, name: &str) -> Result<Function> {
        let c = std::ffi::CString::new(name)
            .map_err(|_| Error::InvalidRequest(format!("kernel name {name:?} holds a NUL byte")))?;
        let mut f: Function = std::ptr::null_mut();
        // SAFETY: a loaded module, a NUL-terminated name, a valid out-pointer.
        let rc = unsafe { (self.module_get_function)(&mut f, m, c.as_ptr()) };
        self.check(rc, || format!("finding kernel `{name}` in its module"))?;
        Ok(f)
    }

    /// Lets `f` use `bytes` of dynamic shared memory (needed above 48 KiB).
    pub fn set_max_dynamic_shared(&self, f: Function, bytes: i32) -> Result<()> {
        // SAFETY: a valid function.
        let rc = unsafe { (self.func_set_attribute)(f, FUNC_ATTR_MAX_DYNAMIC_SHARED, bytes) };
        self.check(rc, || format!("allowing {bytes} bytes of shared memory"))
    }

    /// Resident blocks per multiprocessor of `f` with `threads` threads and `smem` bytes
    /// of dynamic shared memory.
    pub fn occupancy(&self, f: Function, threads: i32, smem: usize) -> Result<i32> {
        let mut n = 0;
        // SAFETY: a valid function and out-pointer.
        let rc = unsafe { (self.occupancy)(&mut n, f, threads, smem) };
        self.check(rc, || "computing a kernel's occupancy".into())?;
        Ok(n)
    }

    /// Queues `f` on `stream` with `params` (pointers to each argument's value).
    ///
    /// # Safety
    /// `params` must point at values of the kernel's parameter types, in order.
    pub unsafe fn launch(
        &self,
        f: Function,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        stream: Stream,
        params: &mut [*mut c_void],
    ) -> CuResult {
        (self.launch_kernel)(
            f,
            grid.0,
            grid.1,
            grid.2,
            block.0,
            block.1,
            block.2,
            smem,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }

    /// A memory pool on `dev` that keeps its memory between uses (release threshold
    /// at the maximum); `None` where pools are unsupported.
    pub fn create_pool(&self, dev: i32) -> Option<MemPool> {
        let (create, set) = (self.pool_create?, self.pool_set_attribute?);
        if self.attribute(dev, ATTR_MEMORY_POOLS_SUPPORTED).ok()? == 0 {
            return None;
        }
        let props = MemPoolProps {
            alloc_type: 1,    // CU_MEM_ALLOCATION_TYPE_PINNED
            handle_types: 0,  // CU_MEM_HANDLE_TYPE_NONE
            location_type: 1, // CU_MEM_LOCATION_TYPE_DEVICE
            location_id: dev,
            win32_security_attributes: std::ptr::null_mut(),
            max_size: 0,
            usage: 0,
            gpu_direct_rdma_capable: 0,
            reserved: [0; 53],
        };
        let mut pool: MemPool = std::ptr::null_mut();
        // SAFETY: a zeroed, fully initialised props struct and valid out-pointers.
        unsafe {
            if create(&mut pool, &props) != 0 {
                return None;
            }
            let mut keep: u64 = u64::MAX;
            set(pool, 4, (&mut keep as *mut u64).cast()); // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
        }
        Some(pool)
    }

    /// Stream-ordered memory from `pool`; `None` when it cannot be had.
    pub fn alloc_async(&self, pool: MemPool, bytes: usize, stream: Stream) -> Option<DevicePtr> {
        let alloc = self.alloc_from_pool?;
        let mut p: DevicePtr = 0;
        // SAFETY: a valid pool and out-pointer.
        (unsafe { alloc(&mut p, bytes, pool, stream) } == 0).then_some(p)
    }

    /// Frees stream-ordered memory after the work queued on `stream` so far.
    pub fn free_async(&self, p: DevicePtr, stream: Stream) -> CuResult {
        match self.free_async {
            // SAFETY: memory from `alloc_async`, freed once.
            Some(f) => unsafe { f(p, stream) },
            None => ERROR_NOT_SUPPORTED,
        }
    }
}

/// Reads the arch of a cubin from its ELF header: `sm_90` for an sm_90 cubin. `None`
/// when it is not a CUDA ELF. Both encodings of `e_flags` are known: the arch in the low
/// byte (before CUDA 12.8) and in bits 8-15 (CUDA 12.8 and later, with ELF ABI version
/// 8 in `e_ident`).
pub fn cubin_arch(image: &[u8]) -> Option<String> {
    if image.len() < 64 || &image[..4] != b"\x7fELF" || image[4] != 2 {
        return None; // 64-bit ELF only
    }
    let machine = u16::from_le_bytes([image[18], image[19]]);
    if machine != 190 {
        return None; // EM_CUDA
    }
    let flags = u32::from_le_bytes([image[48], image[49], image[50], image[51]]);
    let abi_version = image[8];
    let sm = if abi_version >= 8 {
        (flags >> 8) & 0xff
    } else {
        flags & 0xff
    };
    Some(format!("sm_{sm}"))
}

/// The names of the kernels (`.text.<name>` sections) of a cubin.
pub fn cubin_kernels(image: &[u8]) -> Vec<String> {
    let rd16 = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd32 = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let rd64 = |o: usize| {
        image
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(shoff), Some(shentsize), Some(shnum), Some(shstrndx)) =
        (rd64(0x28), rd16(0x3a), rd16(0x3c), rd16(0x3e))
    else {
        return Vec::new();
    };
    let section = |i: usize| {
        let base = shoff + i * shentsize;
        Some((rd32(base)?, rd64(base + 0x18)?, rd64(base + 0x20)?))
    };
    let Some((_, str_off, str_size)) = section(shstrndx) else {
        return Vec::new();
    };
    let Some(strtab) = image.get(str_off..str_off + str_size) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..shnum {
        let Some((name, _, _)) = section(i) else {
            continue;
        };
        let Some(rest) = strtab.get(name..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if let Some(k) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| s.strip_prefix(".text."))
        {
            out.push(k.to_string());
        }
    }
    out
}

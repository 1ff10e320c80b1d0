//! The NVIDIA driver, through `libcuda.so.1` loaded at run time (no link-time CUDA
//! dependency): driver version, devices, compute capability. Used by `xcache doctor`
//! and to pick the CUDA arch of the local GPU.

use std::ffi::{c_char, c_int, CStr};

use serde::Serialize;

/// One GPU.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Device {
    /// Ordinal.
    pub index: i32,
    /// Marketing name.
    pub name: String,
    /// Compute capability, major.
    pub major: i32,
    /// Compute capability, minor.
    pub minor: i32,
}

impl Device {
    /// `sm_90` for compute capability 9.0.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }
}

/// What the driver says.
#[derive(Debug, Clone, Serialize)]
pub struct DriverInfo {
    /// CUDA version the driver supports (`12040` → 12.4).
    pub cuda_version: i32,
    /// The devices.
    pub devices: Vec<Device>,
}

impl DriverInfo {
    /// `12.4`.
    pub fn cuda_version_text(&self) -> String {
        format!(
            "{}.{}",
            self.cuda_version / 1000,
            (self.cuda_version % 1000) / 10
        )
    }
}

type CuInit = unsafe extern "C" fn(u32) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// Asks the driver. `Err` says why there is no usable driver (not installed, no device,
/// an error code from `cuInit`).
pub fn probe() -> Result<DriverInfo, String> {
    // SAFETY: loading the NVIDIA driver library runs its initialisers, as any CUDA
    // program does; the symbols below have the driver API's documented signatures.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1")
            .map_err(|_| "no NVIDIA driver (libcuda.so.1 cannot be loaded)".to_string())?;
        let sym = |name: &[u8]| -> Result<*const (), String> {
            lib.get::<*const ()>(name)
                .map(|s| *s)
                .map_err(|e| format!("libcuda.so.1 lacks {}: {e}", String::from_utf8_lossy(name)))
        };
        let init: CuInit = std::mem::transmute(sym(b"cuInit\0")?);
        let version: CuDriverGetVersion = std::mem::transmute(sym(b"cuDriverGetVersion\0")?);
        let count: CuDeviceGetCount = std::mem::transmute(sym(b"cuDeviceGetCount\0")?);
        let get: CuDeviceGet = std::mem::transmute(sym(b"cuDeviceGet\0")?);
        let get_name: CuDeviceGetName = std::mem::transmute(sym(b"cuDeviceGetName\0")?);
        let attr: CuDeviceGetAttribute = std::mem::transmute(sym(b"cuDeviceGetAttribute\0")?);
        let rc = init(0);
        if rc != 0 {
            return Err(format!(
                "cuInit failed with CUDA error {rc} (100: no device; 999: unknown)"
            ));
        }
        let mut v = 0;
        version(&mut v);
        let mut n = 0;
        count(&mut n);
        let mut devices = Vec::new();
        for i in 0..n {
            let mut dev = 0;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut name = [0 as c_char; 256];
            get_name(name.as_mut_ptr(), name.len() as c_int, dev);
            let (mut major, mut minor) = (0, 0);
            attr(
                &mut major,
                CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                dev,
            );
            attr(
                &mut minor,
                CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                dev,
            );
            devices.push(Device {
                index: i,
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                major,
                minor,
            });
        }
        if devices.is_empty() {
            return Err(format!(
                "the NVIDIA driver (CUDA {}.{}) sees no GPU",
                v / 1000,
                (v % 1000) / 10
            ));
        }
        Ok(DriverInfo {
            cuda_version: v,
            devices,
        })
    }
}

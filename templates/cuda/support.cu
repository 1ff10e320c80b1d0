/* xcache-template
description = "Device memory and synchronisation through the CUDA runtime, for programs that embed xcache without a CUDA library of their own (the demo, the tests)"
entry = [
  "int xc_cuda_malloc(void **ptr, size_t bytes)",
  "int xc_cuda_free(void *ptr)",
  "int xc_cuda_copy(void *dst, const void *src, size_t bytes, int kind)",
  "int xc_cuda_sync(void)",
  "int xc_cuda_device(int *major, int *minor, int *sms, char *name, int name_len)",
  "const char *xc_cuda_error_string(int code)",
]
*/
/* ABI: every function returns a cudaError_t (0 is success).
 *   xc_cuda_copy kind: 1 host to device, 2 device to host, 3 device to device. */
#include <cuda_runtime.h>
#include <string.h>

extern "C" int xc_cuda_malloc(void **ptr, size_t bytes) { return (int)cudaMalloc(ptr, bytes); }

extern "C" int xc_cuda_free(void *ptr) { return (int)cudaFree(ptr); }

extern "C" int xc_cuda_copy(void *dst, const void *src, size_t bytes, int kind) {
    return (int)cudaMemcpy(dst, src, bytes, (cudaMemcpyKind)kind);
}

extern "C" int xc_cuda_sync(void) { return (int)cudaDeviceSynchronize(); }

extern "C" int xc_cuda_device(int *major, int *minor, int *sms, char *name, int name_len) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return (int)e;
    cudaDeviceProp p;
    e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess) return (int)e;
    *major = p.major;
    *minor = p.minor;
    *sms = p.multiProcessorCount;
    if (name && name_len > 0) {
        strncpy(name, p.name, (size_t)name_len - 1);
        name[name_len - 1] = 0;
    }
    return 0;
}

extern "C" const char *xc_cuda_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

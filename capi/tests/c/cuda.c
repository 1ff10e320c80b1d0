/* CUDA through the C ABI: a kernel of the caller's own compiled by NVRTC through the
 * cache (a cubin for the arch of the cuda_arch setting), found again by a second
 * handle without compiling; and, with "gpu" as the second argument, launched on a
 * stream of the caller's and checked against a double-precision reference, through
 * xcache_cuda_launch and through the CUfunction of xcache_cuda_function.
 *
 * Device memory and streams come from the driver API (libcuda.so.1, loaded here with
 * dlopen, as the test machine without a GPU has no libcuda to link against).
 * Usage: cuda BASE_DIR ARCH INC_DIR [gpu]. Prints "ok KEY hit|miss" and exits 0 when
 * every check holds. */
#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xcache.h"

#define CHECK(call)                                                            \
    do {                                                                       \
        xcache_status st_ = (call);                                            \
        if (st_ != XCACHE_OK) {                                                \
            fprintf(stderr, "%s: status %d: %s\n", #call, (int)st_,            \
                    xcache_last_error());                                      \
            return 1;                                                          \
        }                                                                      \
    } while (0)

#define CU(call)                                                               \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_ != 0) {                                                        \
            fprintf(stderr, "%s: CUresult %d\n", #call, rc_);                  \
            return 1;                                                          \
        }                                                                      \
    } while (0)

static const char *SOURCE =
    "#include \"params.cuh\"\n"
    "extern \"C\" __global__ void saxpy(long long n, float a, const float *x,\n"
    "                                  float *y) {\n"
    "  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n"
    "  if (i < n) y[i] = a * x[i] + y[i] + OFFSET;\n"
    "}\n";

typedef int (*mem_alloc_t)(uint64_t *, size_t);
typedef int (*mem_free_t)(uint64_t);
typedef int (*htod_t)(uint64_t, const void *, size_t);
typedef int (*dtoh_t)(void *, uint64_t, size_t);
typedef int (*stream_create_t)(void **, unsigned);
typedef int (*stream_sync_t)(void *);
typedef int (*stream_destroy_t)(void *);
typedef int (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned,
                        unsigned, unsigned, void *, void **, void **);

static int gpu_checks(xcache_module *m) {
    void *cu = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cu) { fprintf(stderr, "no libcuda.so.1\n"); return 1; }
    mem_alloc_t mem_alloc = (mem_alloc_t)dlsym(cu, "cuMemAlloc_v2");
    mem_free_t mem_free = (mem_free_t)dlsym(cu, "cuMemFree_v2");
    htod_t htod = (htod_t)dlsym(cu, "cuMemcpyHtoD_v2");
    dtoh_t dtoh = (dtoh_t)dlsym(cu, "cuMemcpyDtoH_v2");
    stream_create_t stream_create = (stream_create_t)dlsym(cu, "cuStreamCreate");
    stream_sync_t stream_sync = (stream_sync_t)dlsym(cu, "cuStreamSynchronize");
    stream_destroy_t stream_destroy = (stream_destroy_t)dlsym(cu, "cuStreamDestroy_v2");
    launch_t launch = (launch_t)dlsym(cu, "cuLaunchKernel");

    /* The first call loads the module and makes the GPU's primary context current. */
    void *fn = NULL;
    CHECK(xcache_cuda_function(m, "saxpy", &fn));
    if (fn == NULL) { fprintf(stderr, "a NULL CUfunction\n"); return 1; }
    if (xcache_cuda_function(m, "nothere", &fn) != XCACHE_ERR_CUDA) {
        fprintf(stderr, "a missing kernel was found\n");
        return 1;
    }

    const long long n = 1000003;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    float *got = malloc(n * sizeof(float));
    for (long long i = 0; i < n; i++) {
        x[i] = (float)(i % 1000) * 0.001f;
        y[i] = (float)(i % 7) - 3.0f;
    }
    uint64_t dx, dy;
    CU(mem_alloc(&dx, n * sizeof(float)));
    CU(mem_alloc(&dy, n * sizeof(float)));
    CU(htod(dx, x, n * sizeof(float)));
    CU(htod(dy, y, n * sizeof(float)));
    void *stream;
    CU(stream_create(&stream, 1 /* CU_STREAM_NON_BLOCKING */));

    float a = 2.5f;
    void *args[] = {(void *)&n, &a, &dx, &dy};
    unsigned block[3] = {256, 1, 1};
    unsigned grid[3] = {(unsigned)((n + 255) / 256), 1, 1};
    CHECK(xcache_cuda_launch(m, "saxpy", grid, block, 0, stream, args, 4));
    CU(stream_sync(stream));
    CU(dtoh(got, dy, n * sizeof(float)));
    for (long long i = 0; i < n; i++) {
        double want = 2.5 * (double)x[i] + (double)y[i] + 0.5;
        if (fabs((double)got[i] - want) > 1e-5 * fabs(want) + 1e-6) {
            fprintf(stderr, "y[%lld] = %g, want %g\n", i, got[i], want);
            return 1;
        }
    }
    /* Again through the CUfunction, as a caller with its own launcher does it. */
    CU(htod(dy, y, n * sizeof(float)));
    CU(launch(fn, grid[0], 1, 1, 256, 1, 1, 0, stream, args, NULL));
    CU(stream_sync(stream));
    CU(dtoh(got, dy, n * sizeof(float)));
    double want0 = 2.5 * (double)x[5] + (double)y[5] + 0.5;
    if (fabs((double)got[5] - want0) > 1e-5) {
        fprintf(stderr, "through the CUfunction: y[5] = %g, want %g\n", got[5], want0);
        return 1;
    }
    unsigned zero[3] = {0, 1, 1};
    if (xcache_cuda_launch(m, "saxpy", zero, block, 0, stream, args, 4) !=
        XCACHE_ERR_INVALID_ARGUMENT) {
        fprintf(stderr, "a 0 grid was launched\n");
        return 1;
    }
    CU(stream_destroy(stream));
    CU(mem_free(dx));
    CU(mem_free(dy));
    free(x);
    free(y);
    free(got);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 64;
    const char *base = argv[1], *arch = argv[2], *inc = argv[3];
    bool gpu = argc > 4 && strcmp(argv[4], "gpu") == 0;

    /* The kernel's header is found by an absolute include dir. */
    const char *dirs[] = {inc};
    const char *options[] = {"-DOFFSET=0.5f"};
    xcache_cache *cache;
    CHECK(xcache_open(base, &cache));
    xcache_module *m = NULL;
    CHECK(xcache_cuda_module(cache, SOURCE, options, 1, dirs, 1, &m));
    const char *got_arch, *path, *key;
    CHECK(xcache_module_arch(m, &got_arch));
    CHECK(xcache_module_path(m, &path));
    CHECK(xcache_module_key(m, &key));
    if (strcmp(got_arch, arch) != 0) {
        fprintf(stderr, "built for %s, asked %s\n", got_arch, arch);
        return 1;
    }
    const unsigned char *image;
    size_t size;
    CHECK(xcache_module_image(m, (const void **)&image, &size));
    if (size < 64 || memcmp(image, "\x7f" "ELF", 4) != 0) {
        fprintf(stderr, "not a cubin (%zu bytes)\n", size);
        return 1;
    }
    if (strlen(key) != 64 || strstr(path, base) != path) {
        fprintf(stderr, "key %s, path %s\n", key, path);
        return 1;
    }
    /* Relative include dirs and a bad source are refused, with a message. */
    const char *rel[] = {"inc"};
    xcache_module *bad = NULL;
    if (xcache_cuda_module(cache, SOURCE, NULL, 0, rel, 1, &bad) !=
        XCACHE_ERR_INVALID_ARGUMENT) {
        fprintf(stderr, "a relative include dir was taken\n");
        return 1;
    }
    if (xcache_cuda_module(cache, "__global__ void k() { nope; }", NULL, 0, NULL, 0,
                           &bad) != XCACHE_ERR_COMPILE ||
        strstr(xcache_last_error(), "nope") == NULL) {
        fprintf(stderr, "a compile error was not reported: %s\n", xcache_last_error());
        return 1;
    }
    bool hit = false;
    CHECK(xcache_module_hit(m, &hit));
    if (gpu && gpu_checks(m) != 0) return 1;
    printf("ok %s %s\n", key, hit ? "hit" : "miss");
    CHECK(xcache_module_release(m));
    CHECK(xcache_close(cache));
    return 0;
}

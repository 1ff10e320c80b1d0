/* A kernel as a code generator would emit it: y = a*x + y over n floats.
 * Returns 0 on success, as every xcache kernel does. */
#include <stdint.h>

int saxpy(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++)
        y[i] = a * x[i] + y[i];
    return 0;
}

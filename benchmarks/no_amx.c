/* A process that behaves as on a CPU without AMX, for benchmarks: onnxruntime asks Linux for the
 * AMX tile state when it loads (arch_prctl ARCH_REQ_XCOMP_PERM) and uses its AMX kernels only if
 * granted; this preload refuses that one request, so onnxruntime keeps its AVX-512 VNNI kernels.
 *
 *   gcc -shared -fPIC -O2 benchmarks/no_amx.c -o /tmp/no_amx.so -ldl
 *   LD_PRELOAD=/tmp/no_amx.so python benchmarks/fastsam_amx.py --models MODELS
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>

#define ARCH_REQ_XCOMP_PERM 0x1023

long syscall(long number, ...) {
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == ARCH_REQ_XCOMP_PERM) {
        errno = EPERM;
        return -1;
    }
    static long (*real)(long, ...) = 0;
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

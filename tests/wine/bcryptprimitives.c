/*
 * A stand-in for Windows' bcryptprimitives.dll, for the Wine tests only.
 *
 * Rust's standard library (1.78 and later) takes its random numbers from
 * ProcessPrng in bcryptprimitives.dll, which every supported Windows has
 * (Windows 10 and later) but Wine gained only in 8.13; Debian bookworm's
 * wine64 is 8.0, so without this no Rust program starts under it ("Library
 * bcryptprimitives.dll ... not found", exit 53). The test harness
 * (tests/src/wine.rs) builds this with x86_64-w64-mingw32-gcc into the test
 * prefix's system32; ocifs.exe itself is not changed. ProcessPrng is
 * answered from BCryptGenRandom, which Wine 8.0 has.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, n, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}

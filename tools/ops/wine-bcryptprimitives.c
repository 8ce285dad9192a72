/* A stand-in bcryptprimitives.dll for running Shard's Windows build under Debian's wine 8.0.
 *
 * Rust's standard library on Windows 10+ takes its randomness from ProcessPrng in
 * bcryptprimitives.dll, which real Windows has and wine 8.0 does not, so every Rust program
 * fails to start there (status c0000135). This DLL, placed next to the .exe, answers that one
 * call with BCryptGenRandom, which wine has. It is for checks under wine only; it is never
 * shipped. Built by scripts/check-windows.sh.
 */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}

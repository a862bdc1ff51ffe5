/*
 * The few thread primitives chunks.c's pool is written on, from POSIX
 * threads or from Win32 (SRW locks, condition variables, _beginthreadex),
 * so that the pool itself is written once:
 *
 *   psm_mutex, psm_cond      statically initialized (PSM_MUTEX_INIT,
 *                            PSM_COND_INIT); lock, unlock, wait, signal,
 *                            broadcast
 *   psm_thread               thread_start (0 on success, as pthread_create)
 *                            and thread_join; an entry point is declared
 *                            `static PSM_THREAD_ENTRY name(void *arg)` and
 *                            returns 0
 *   now_ns, cpu_relax        a monotonic clock and a spin-wait hint
 *
 * PSM_HAVE_THREADS is defined where one of them and C11 atomics exist (the
 * pool needs both); elsewhere, or built with -DPSM_NO_THREADS, the kernel
 * runs every call on the calling thread.  PSM_HAVE_FORK marks POSIX, whose
 * fork the pool must survive (Windows has none).
 *
 * Static inline functions only: chunks.c and tests/c include this header,
 * after defining _POSIX_C_SOURCE 200809L (clock_gettime and pthread_sigmask
 * under -std=c11) before any system header.
 */
#ifndef PYSAFEMAX_SYS_THREADS_H
#define PYSAFEMAX_SYS_THREADS_H

#include <stdint.h>

#if !defined(PSM_NO_THREADS) && defined(__STDC_VERSION__) && \
    __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_ATOMICS__)
#if defined(_WIN32)
#define PSM_WIN32_THREADS 1
#elif defined(__unix__) || defined(__APPLE__)
#define PSM_POSIX_THREADS 1
#endif
#endif

#if defined(PSM_WIN32_THREADS)

/* SRW locks and condition variables are Vista's */
#if !defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0600
#undef _WIN32_WINNT
#define _WIN32_WINNT 0x0600
#endif
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <process.h>   /* _beginthreadex: CreateThread without the CRT's per-thread setup */

#define PSM_HAVE_THREADS 1

typedef SRWLOCK psm_mutex;
typedef CONDITION_VARIABLE psm_cond;
typedef HANDLE psm_thread;
#define PSM_MUTEX_INIT SRWLOCK_INIT
#define PSM_COND_INIT CONDITION_VARIABLE_INIT
#define PSM_THREAD_ENTRY unsigned __stdcall

static inline void mutex_lock(psm_mutex *m) { AcquireSRWLockExclusive(m); }
static inline void mutex_unlock(psm_mutex *m) { ReleaseSRWLockExclusive(m); }
static inline void cond_wait(psm_cond *c, psm_mutex *m)
{
    SleepConditionVariableSRW(c, m, INFINITE, 0);
}
static inline void cond_signal(psm_cond *c) { WakeConditionVariable(c); }
static inline void cond_broadcast(psm_cond *c) { WakeAllConditionVariable(c); }

static inline int thread_start(psm_thread *t, unsigned(__stdcall *entry)(void *), void *arg)
{
    *t = (HANDLE)_beginthreadex(NULL, 0, entry, arg, 0, NULL);
    return *t == 0;
}

static inline void thread_join(psm_thread t)
{
    WaitForSingleObject(t, INFINITE);
    CloseHandle(t);
}

static inline int64_t now_ns(void)
{
    LARGE_INTEGER t, hz;   /* hz: fixed at boot, read from a shared page */
    QueryPerformanceCounter(&t);
    QueryPerformanceFrequency(&hz);
    return t.QuadPart / hz.QuadPart * 1000000000 +
           t.QuadPart % hz.QuadPart * 1000000000 / hz.QuadPart;
}

static inline void cpu_relax(void) { YieldProcessor(); }

#elif defined(PSM_POSIX_THREADS)

#include <pthread.h>
#include <signal.h>
#include <time.h>

#define PSM_HAVE_THREADS 1
#define PSM_HAVE_FORK 1

typedef pthread_mutex_t psm_mutex;
typedef pthread_cond_t psm_cond;
typedef pthread_t psm_thread;
#define PSM_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
#define PSM_COND_INIT PTHREAD_COND_INITIALIZER
#define PSM_THREAD_ENTRY void *

static inline void mutex_lock(psm_mutex *m) { pthread_mutex_lock(m); }
static inline void mutex_unlock(psm_mutex *m) { pthread_mutex_unlock(m); }
static inline void cond_wait(psm_cond *c, psm_mutex *m) { pthread_cond_wait(c, m); }
static inline void cond_signal(psm_cond *c) { pthread_cond_signal(c); }
static inline void cond_broadcast(psm_cond *c) { pthread_cond_broadcast(c); }

/* The thread starts with every signal blocked: a signal for the process is
 * its other threads' to handle, and a parked helper should never wake for
 * one. */
static inline int thread_start(psm_thread *t, void *(*entry)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int failed = pthread_create(t, NULL, entry, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return failed;
}

static inline void thread_join(psm_thread t) { pthread_join(t, NULL); }

static inline int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif

#endif /* PYSAFEMAX_SYS_THREADS_H */

/* kernel32 bridge: performs kernel32's virtual-memory calls in its own (Windows) address space
 * for a test driver on the other end of a pipe. Built with mingw, run under Wine, driven by
 * tests/os/wine/bridge.py. It is a test tool, not part of gcalloc.
 *
 * Protocol: one request per line on stdin, one reply per line on stdout, all numbers in hex.
 *
 *   A addr size type protect     VirtualAlloc            -> result err
 *   F addr size type             VirtualFree             -> result err
 *   P addr size protect out      VirtualProtect (out=0: NULL old-protect pointer)
 *                                                        -> result old err
 *   Q addr length                VirtualQuery (length: the buffer size passed)
 *                                                        -> result base allocbase allocprotect
 *                                                           regionsize state protect type err
 *   S                            GetSystemInfo           -> its ten fields, in struct order
 *   E                            GetLastError            -> err
 *   e code                       SetLastError            -> 0
 *   R addr                       read a byte             -> byte, or -1 if the read faults
 *   W addr byte                  write a byte            -> 0, or -1 if the write faults
 *   L addr size byte step        write byte at addr, addr+step, ... < addr+size
 *                                                        -> 0, or -1 at the first fault
 *   H addr size                  histogram of the bytes  -> 256 counts, or -1 at a fault
 *   X                            exit
 *
 * The last error follows ctypes' use_last_error=True: before each kernel32 call the saved error
 * is made the thread's, after it the thread's is saved, so the C runtime's own calls in between
 * (reading the pipe, writing the reply) cannot change what the driver sees.
 *
 * Faults: a read or write that would fault is performed for real, under a vectored exception
 * handler that turns the access violation at the probe instruction into a -1 return. The bulk
 * operations (L, H) probe the first byte of each page before touching the rest of it, since a
 * protection covers whole pages.
 */
#include <windows.h>
#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static DWORD saved_error;
static SIZE_T page_size = 4096;

#define CALL(expr) (SetLastError(saved_error), (expr))
#define SAVE() (saved_error = GetLastError())

/* probe_read(addr) -> the byte, or -1; probe_write(addr, byte) -> 0, or -1. Each faulting
 * instruction is the first of its function, so the handler resumes at the matching *_fault
 * label with the stack as the call left it. */
int probe_read(const volatile unsigned char *addr);
int probe_write(volatile unsigned char *addr, int value);
extern char probe_read_fault[], probe_write_fault[];
__asm__(
    ".text\n"
    ".globl probe_read\n"
    "probe_read:\n"
    "    movzbl (%rcx), %eax\n"
    "    ret\n"
    ".globl probe_read_fault\n"
    "probe_read_fault:\n"
    "    movl $-1, %eax\n"
    "    ret\n"
    ".globl probe_write\n"
    "probe_write:\n"
    "    movb %dl, (%rcx)\n"
    "    xorl %eax, %eax\n"
    "    ret\n"
    ".globl probe_write_fault\n"
    "probe_write_fault:\n"
    "    movl $-1, %eax\n"
    "    ret\n");

static LONG CALLBACK on_fault(EXCEPTION_POINTERS *e)
{
    if (e->ExceptionRecord->ExceptionCode != EXCEPTION_ACCESS_VIOLATION)
        return EXCEPTION_CONTINUE_SEARCH;
    if (e->ContextRecord->Rip == (DWORD64)(ULONG_PTR)probe_read) {
        e->ContextRecord->Rip = (DWORD64)(ULONG_PTR)probe_read_fault;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    if (e->ContextRecord->Rip == (DWORD64)(ULONG_PTR)probe_write) {
        e->ContextRecord->Rip = (DWORD64)(ULONG_PTR)probe_write_fault;
        return EXCEPTION_CONTINUE_EXECUTION;
    }
    return EXCEPTION_CONTINUE_SEARCH;
}

static unsigned long long arg(char **p)
{
    return strtoull(*p, p, 16);
}

static SIZE_T page_rest(ULONG_PTR a, ULONG_PTR end)
{
    ULONG_PTR next = (a | (page_size - 1)) + 1;
    return (SIZE_T)((next < end ? next : end) - a);
}

static int fill(unsigned char *a, SIZE_T n, int value, SIZE_T step)
{
    ULONG_PTR p = (ULONG_PTR)a, end = p + n;
    if (step == 0)
        return -1;
    while (p < end) {
        SIZE_T run = page_rest(p, end);
        if (probe_write((unsigned char *)p, value) < 0)
            return -1;
        if (step == 1) {
            memset((unsigned char *)p, value, run);
            p += run;
        } else {
            ULONG_PTR stop = p + run;
            for (; p < stop; p += step)
                *(volatile unsigned char *)p = (unsigned char)value;
        }
    }
    return 0;
}

static int histogram(const unsigned char *a, SIZE_T n, unsigned long long counts[256])
{
    ULONG_PTR p = (ULONG_PTR)a, end = p + n;
    memset(counts, 0, 256 * sizeof counts[0]);
    while (p < end) {
        SIZE_T run = page_rest(p, end), i;
        if (probe_read((const unsigned char *)p) < 0)
            return -1;
        for (i = 0; i < run; i++)
            counts[((const unsigned char *)p)[i]]++;
        p += run;
    }
    return 0;
}

int main(void)
{
    static char line[512];
    static unsigned long long counts[256];
    SYSTEM_INFO si;

    _setmode(_fileno(stdin), _O_BINARY);
    _setmode(_fileno(stdout), _O_BINARY);
    GetSystemInfo(&si);
    page_size = si.dwPageSize;
    if (!AddVectoredExceptionHandler(1, on_fault))
        return 2;
    saved_error = 0;
    printf("ready\n");
    fflush(stdout);

    while (fgets(line, sizeof line, stdin)) {
        char *p = line + 1;
        switch (line[0]) {
        case 'A': {
            void *addr = (void *)(ULONG_PTR)arg(&p);
            SIZE_T size = arg(&p);
            DWORD type = arg(&p), prot = arg(&p);
            void *r = CALL(VirtualAlloc(addr, size, type, prot));
            SAVE();
            printf("%llx %lx\n", (unsigned long long)(ULONG_PTR)r, saved_error);
            break;
        }
        case 'F': {
            void *addr = (void *)(ULONG_PTR)arg(&p);
            SIZE_T size = arg(&p);
            DWORD type = arg(&p);
            BOOL r = CALL(VirtualFree(addr, size, type));
            SAVE();
            printf("%x %lx\n", r, saved_error);
            break;
        }
        case 'P': {
            void *addr = (void *)(ULONG_PTR)arg(&p);
            SIZE_T size = arg(&p);
            DWORD prot = arg(&p), old = 0;
            int out = (int)arg(&p);
            BOOL r = CALL(VirtualProtect(addr, size, prot, out ? &old : NULL));
            SAVE();
            printf("%x %lx %lx\n", r, old, saved_error);
            break;
        }
        case 'Q': {
            MEMORY_BASIC_INFORMATION m;
            void *addr = (void *)(ULONG_PTR)arg(&p);
            SIZE_T len = arg(&p);
            SIZE_T r;
            memset(&m, 0, sizeof m);
            r = CALL(VirtualQuery(addr, &m, len < sizeof m ? len : sizeof m));
            SAVE();
            printf("%llx %llx %llx %lx %llx %lx %lx %lx %lx\n", (unsigned long long)r,
                   (unsigned long long)(ULONG_PTR)m.BaseAddress,
                   (unsigned long long)(ULONG_PTR)m.AllocationBase, m.AllocationProtect,
                   (unsigned long long)m.RegionSize, m.State, m.Protect, m.Type, saved_error);
            break;
        }
        case 'S':
            CALL(GetSystemInfo(&si));
            SAVE();
            printf("%x %x %llx %llx %llx %lx %lx %lx %x %x\n", si.wProcessorArchitecture,
                   (unsigned)si.dwPageSize,
                   (unsigned long long)(ULONG_PTR)si.lpMinimumApplicationAddress,
                   (unsigned long long)(ULONG_PTR)si.lpMaximumApplicationAddress,
                   (unsigned long long)si.dwActiveProcessorMask, si.dwNumberOfProcessors,
                   si.dwProcessorType, si.dwAllocationGranularity, si.wProcessorLevel,
                   si.wProcessorRevision);
            break;
        case 'E': {
            DWORD r = CALL(GetLastError());
            SAVE();
            printf("%lx\n", r);
            break;
        }
        case 'e':
            saved_error = (DWORD)arg(&p);
            printf("0\n");
            break;
        case 'R': {
            unsigned char *addr = (unsigned char *)(ULONG_PTR)arg(&p);
            int r = probe_read(addr);
            printf(r < 0 ? "-1\n" : "%x\n", r);
            break;
        }
        case 'W': {
            unsigned char *addr = (unsigned char *)(ULONG_PTR)arg(&p);
            int value = (int)arg(&p);
            printf("%d\n", probe_write(addr, value));
            break;
        }
        case 'L': {
            unsigned char *addr = (unsigned char *)(ULONG_PTR)arg(&p);
            SIZE_T size = arg(&p);
            int value = (int)arg(&p);
            SIZE_T step = arg(&p);
            printf("%d\n", fill(addr, size, value, step));
            break;
        }
        case 'H': {
            unsigned char *addr = (unsigned char *)(ULONG_PTR)arg(&p);
            SIZE_T size = arg(&p);
            int i;
            if (histogram(addr, size, counts) < 0) {
                printf("-1\n");
                break;
            }
            for (i = 0; i < 256; i++)
                printf(i ? " %llx" : "%llx", counts[i]);
            printf("\n");
            break;
        }
        case 'X':
            return 0;
        default:
            printf("? %s", line);
            break;
        }
        fflush(stdout);
    }
    return 0;
}

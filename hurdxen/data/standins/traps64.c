/* A 64-bit boot module that calls the kernel (no libc). GNU Mach's x86_64 trap convention: `syscall` with the
   trap number (negative) in %rax and the arguments in %rdi %rsi %rdx %r10 %r8 %r9; a 7th argument sits on the user
   stack above a return address, as glibc's stubs (called as functions) leave it. It makes mach_task_self,
   mach_reply_port, then RPCs with mach_msg to the device master port (its --device-master-port= argument):
   device_open "console" and device_write_inband, and receives on an empty port with a timeout, which blocks in
   the kernel (the return through thread_syscall_return). It reports through mach_print (trap 30: GNU Mach's
   printf, which reaches Xen's serial log; the console device's PV ring does not reach the boot check's log), so
   only a working syscall path shows its lines; it keeps calling the kernel after that. A wrong answer stops it
   with a line that says which. */
typedef unsigned int u32;
typedef unsigned long u64;

#define TRAP(name, nr) __asm__(".text\n.globl " #name "\n" #name ":\n mov %rcx,%r10\n mov $" #nr ",%rax\n" \
                               " syscall\n ret\n")
TRAP(mach_msg_trap, -25);
TRAP(mach_reply_port, -26);
TRAP(mach_task_self, -28);
TRAP(mach_print, -30);
u32 mach_reply_port(void);
void mach_print(const char *s);
u32 mach_task_self(void);
int mach_msg_trap(void *msg, int option, u32 send_size, u32 rcv_size, u32 rcv_name, u32 timeout, u32 notify);

__asm__(".text\n.globl _start\n_start:\n mov %rsp,%rdi\n and $-16,%rsp\n call standin_main\n1: jmp 1b\n");

void *memset(void *d, int c, u64 n) { unsigned char *p = d; while (n--) *p++ = (unsigned char)c; return d; }
void *memcpy(void *d, const void *s, u64 n) {
    unsigned char *p = d; const unsigned char *q = s; while (n--) *p++ = *q++; return d;
}

/* The x86_64 message layout of GNU Mach's headers and MIG: 8-byte type descriptors, data 8-byte aligned,
   port names inline in 8 bytes. */
struct header { u32 bits, size; u64 remote, local; u32 seqno; int id; };
struct type { u32 word, number; };
#define TYPE(name, bits, n) ((struct type){(name) | (bits) << 8 | 1u << 29, (n)})   /* inline */
#define LONG_TYPE(name, bits, n) ((struct type){(name) | (bits) << 8 | 1u << 29 | 1u << 30, (n)})
enum { INTEGER_32 = 2, CHAR = 8, INTEGER_64 = 11, STRING_C = 12, MOVE_SEND = 17, COPY_SEND = 19,
       MAKE_SEND_ONCE = 21 };
#define SEND_MSG 1
#define RCV_MSG 2
#define RCV_TIMEOUT 0x100
#define RCV_TIMED_OUT 0x10004003
#define D_WRITE 2

struct open_request { struct header h; struct type mode_t; u32 mode, pad; struct type name_t; char name[128]; };
struct open_reply { struct header h; struct type ret_t; int ret; u32 pad; struct type dev_t; u64 dev; };
struct write_request {
    struct header h; struct type mode_t; u32 mode, pad; struct type rec_t; u64 rec; struct type data_t;
    char data[128];
};
struct write_reply { struct header h; struct type ret_t; int ret; u32 pad; struct type n_t; int n; u32 pad2; };

static u32 reply_port, console;

static u64 len(const char *s) { u64 n = 0; while (s[n]) n++; return n; }
static int same(struct type a, struct type b) { return a.word == b.word && a.number == b.number; }
static char *num(char *p, u64 v) {
    char t[24]; int i = 0;
    do t[i++] = (char)('0' + v % 10); while (v /= 10);
    while (i) *p++ = t[--i];
    return p;
}
static char *put(char *p, const char *s) { while (*s) *p++ = *s++; return p; }

/* device_write_inband(console, D_WRITE, 0, text): -1 if the RPC failed, else the bytes written. */
static long say(const char *text) {
    union { struct write_request in; struct write_reply out; } m;
    u64 n = len(text);
    memset(&m, 0, sizeof m);
    if (n > sizeof m.in.data) n = sizeof m.in.data;
    m.in.mode_t = TYPE(INTEGER_32, 32, 1);
    m.in.mode = D_WRITE;
    m.in.rec_t = TYPE(INTEGER_64, 64, 1);
    m.in.data_t = TYPE(CHAR, 8, (u32)n);
    memcpy(m.in.data, text, n);
    u32 size = (u32)(72 + ((n + 7) & ~7ul));
    m.in.h = (struct header){COPY_SEND | MAKE_SEND_ONCE << 8, size, console, reply_port, 0, 2803};
    if (mach_msg_trap(&m, SEND_MSG | RCV_MSG, size, sizeof m, reply_port, 0, 0) != 0) return -1;
    if (m.out.h.id != 2903 || m.out.h.size != sizeof m.out || !same(m.out.ret_t, TYPE(INTEGER_32, 32, 1))
        || m.out.ret != 0 || !same(m.out.n_t, TYPE(INTEGER_32, 32, 1)))
        return -1;
    return m.out.n;
}

static void stop(void) { for (;;) ; }

static void fail(const char *what) {
    char line[120], *p = put(line, "hurdxen-syscalls: FAILED: ");
    p = put(p, what);
    *p++ = '\n'; *p = 0;
    mach_print(line);
    stop();
}

/* device_open(master, D_WRITE, "console") */
static u32 open_console(u32 master) {
    union { struct open_request in; struct open_reply out; } m;
    memset(&m, 0, sizeof m);
    m.in.mode_t = TYPE(INTEGER_32, 32, 1);
    m.in.mode = D_WRITE;
    m.in.name_t = LONG_TYPE(STRING_C, 1024, 1);
    memcpy(m.in.name, "console", 8);
    m.in.h = (struct header){COPY_SEND | MAKE_SEND_ONCE << 8, sizeof m.in, master, reply_port, 0, 2800};
    if (mach_msg_trap(&m, SEND_MSG | RCV_MSG, sizeof m.in, sizeof m, reply_port, 0, 0) != 0) return 0;
    if (m.out.h.id != 2900 || m.out.h.size != sizeof m.out || !(m.out.h.bits & 0x80000000u)
        || !same(m.out.ret_t, TYPE(INTEGER_32, 32, 1)) || m.out.ret != 0
        || !same(m.out.dev_t, TYPE(MOVE_SEND, 64, 1)))
        return 0;
    return (u32)m.out.dev;
}

/* A receive on the reply port, which nobody sends to: it blocks in the kernel and must time out. */
static int times_out(u32 ms) {
    struct header h;
    memset(&h, 0, sizeof h);
    return mach_msg_trap(&h, RCV_MSG | RCV_TIMEOUT, 0, sizeof h, reply_port, ms, 0) == RCV_TIMED_OUT;
}

static u32 arg_port(u64 *sp, const char *key) {
    u64 argc = sp[0];
    char **argv = (char **)(sp + 1);
    for (u64 i = 0; i < argc; i++) {
        const char *a = argv[i], *k = key;
        while (*k && *a == *k) a++, k++;
        if (*k) continue;
        u32 v = 0;
        while (*a >= '0' && *a <= '9') v = v * 10 + (u32)(*a++ - '0');
        return v;
    }
    return 0;
}

void standin_main(u64 *sp) {
    u32 task = mach_task_self();
    if (task == 0 || task == ~0u) stop();
    if (mach_task_self() != task) stop();
    reply_port = mach_reply_port();
    if (reply_port == 0 || reply_port == ~0u || reply_port == task) stop();
    u32 master = arg_port(sp, "--device-master-port=");
    if (master == 0) fail("no --device-master-port= argument");
    console = open_console(master);
    if (console == 0) fail("device_open console");
    char line[128], *p = put(line, "hurdxen-syscalls: mach_task_self ");
    p = num(p, task);
    p = put(p, ", mach_reply_port ");
    p = num(p, reply_port);
    p = put(p, ", device_open console ");
    p = num(p, console);
    *p++ = '\n'; *p = 0;
    mach_print(line);
    long n = say(line);
    if (n != (long)len(line)) fail("device_write_inband");
    if (!times_out(100)) fail("mach_msg receive timeout");
    p = put(line, "hurdxen-syscalls: all traps returned right (device_write_inband wrote ");
    p = num(p, (u64)n);
    p = put(p, " bytes, a blocking receive timed out)\n");
    *p = 0;
    mach_print(line);
    for (u64 rounds = 1;; rounds++) {
        if (!times_out(200)) fail("mach_msg receive timeout in the loop");
        if (mach_task_self() != task) fail("mach_task_self in the loop");
        if (rounds % 25 == 0) {  /* every 5 s */
            p = put(line, "hurdxen-syscalls: still calling the kernel, round ");
            p = num(p, rounds);
            *p++ = '\n'; *p = 0;
            if (say(line) != (long)len(line)) fail("device_write_inband in the loop");
            mach_print(line);
        }
    }
}

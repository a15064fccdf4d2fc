/* A 32-bit boot module that makes tasks go away, as a Hurd server that gives up at its start does (no libc).
   GNU Mach's i386 trap convention: `lcall $7,$0` through the call gate of the task's LDT (Xen emulates the gate
   for a PV guest) with the trap number (negative) in %eax and the arguments on the user stack above a return
   address, as glibc's stubs (called as functions) leave them. It makes mach_task_self and mach_reply_port, then
   hand-built mach_msg RPCs on the kernel's task ports (message ids from GNU Mach's include/mach/mach.defs,
   subsystem mach 2000: task_create 2007, task_terminate 2008, vm_allocate 2021; include/mach/mach_host.defs,
   mach_host 2600: vm_wire 2636): task_create a child, vm_allocate a page in it and vm_wire it through the host
   privilege port (its --host-priv-port= argument), which makes the kernel enter it in the child's pmap (a page
   table: under Xen pinned and read-only), task_terminate the child (its pmap is destroyed in the call), the same
   for CHILDREN - 1 more children without the wired page, then task_terminate itself (the reaper destroys its pmap, page tables of its own mappings included). Either
   pmap_destroy panicked the 32-bit Xen kernel before recipes/patches/gnumach/0013 (issue 24). Each step is reported
   through mach_print (trap 30: GNU Mach's printf, which reaches Xen's serial log); a wrong answer stops it with a
   line that says which. */
typedef unsigned int u32;

#define TRAP(name, nr) __asm__(".text\n.globl " #name "\n" #name ":\n movl $" #nr ",%eax\n lcall $7,$0\n ret\n")
TRAP(mach_msg_trap, -25);
TRAP(mach_reply_port, -26);
TRAP(mach_task_self, -28);
TRAP(mach_print, -30);
u32 mach_reply_port(void);
u32 mach_task_self(void);
void mach_print(const char *s);
int mach_msg_trap(void *msg, int option, u32 send_size, u32 rcv_size, u32 rcv_name, u32 timeout, u32 notify);

/* The kernel starts a boot task with argc, then argv, on its stack. */
__asm__(".text\n.globl _start\n_start:\n movl %esp,%eax\n andl $-16,%esp\n subl $12,%esp\n pushl %eax\n"
        " call standin_main\n1: jmp 1b\n");

/* The i386 message layout of GNU Mach's headers and MIG: a 24-byte header, 4-byte type descriptors
   (name:8 size:8 number:12 inline:1 longform:1 deallocate:1 unused:1), port names in 4 bytes. */
struct header { u32 bits, size, remote, local, seqno; int id; };
#define TYPE(name, bits) ((name) | (bits) << 8 | 1u << 16 | 1u << 28) /* one inline element */
enum { BOOLEAN = 0, INTEGER_32 = 2, MOVE_SEND = 17, COPY_SEND = 19, MAKE_SEND_ONCE = 21 };
#define COMPLEX 0x80000000u
#define SEND_MSG 1
#define RCV_MSG 2
#define REQUEST(dest, reply, size, id) ((struct header){COPY_SEND | MAKE_SEND_ONCE << 8, (size), (dest), (reply), 0, (id)})

struct msg { struct header h; u32 w[8]; };

/* Children made and terminated in turn: the first with a wired page (a pinned page table), the others with page
   directories only. A page directory is made read-only without a TLB flush, so a write through a stale writable
   entry can get by for a while; freeing and reusing many of them (50 rounds: an unpatched kernel of this tree
   panicked at the 37th) finds one the slab allocator cannot write. */
#define CHILDREN 50

static u32 reply_port;

static char *hex(char *p, u32 v) {
    for (int i = 28; i >= 0; i -= 4) *p++ = "0123456789abcdef"[(v >> i) & 15];
    return p;
}
static char *put(char *p, const char *s) { while (*s) *p++ = *s++; return p; }

/* The port name in argument `key`N (the boot script's ${host-port} and the like), 0 if none. */
static u32 arg_port(u32 *sp, const char *key) {
    char **argv = (char **)(sp + 1);
    for (u32 i = 0; i < sp[0]; i++) {
        const char *a = argv[i], *k = key;
        while (*k && *a == *k) a++, k++;
        if (*k) continue;
        u32 n = 0;
        while (*a >= '0' && *a <= '9') n = n * 10 + (u32)(*a++ - '0');
        return n;
    }
    return 0;
}

static void say(const char *what, u32 value) {
    char line[120], *p = put(line, "hurdxen-terminate: ");
    p = put(p, what);
    if (value != ~0u) p = hex(put(p, " "), value);
    *p++ = '\n';
    *p = 0;
    mach_print(line);
}

static void fail(const char *what, u32 value) {
    say(what, value);
    say("FAILED", ~0u);
    for (;;) ;
}

/* A routine's RPC: send `m` (size bytes) and receive its reply into `m` on reply_port; stops with a line unless
   mach_msg succeeds and the reply has the request's id + 100, `reply_size` bytes and a return code of 0. */
static void rpc(struct msg *m, u32 size, u32 reply_size, const char *what) {
    int id = m->h.id;
    int r = mach_msg_trap(m, SEND_MSG | RCV_MSG, size, sizeof *m, reply_port, 0, 0);
    if (r != 0) fail(what, (u32)r);
    if (m->h.id != id + 100 || m->h.size != reply_size || m->w[0] != TYPE(INTEGER_32, 32)) fail(what, (u32)m->h.id);
    if (m->w[1] != 0) fail(what, m->w[1]);
}

void standin_main(u32 *sp) {
    u32 host_priv = arg_port(sp, "--host-priv-port=");
    u32 self = mach_task_self();
    reply_port = mach_reply_port();
    if (!self || !reply_port) fail("mach_task_self/mach_reply_port", self);
    say("mach_task_self", self);

    struct msg m;
    for (u32 round = 0; round < CHILDREN; round++) {
        /* task_create(self, inherit_memory = FALSE, &child) */
        m = (struct msg){REQUEST(self, reply_port, 32, 2007), {TYPE(BOOLEAN, 32), 0}};
        rpc(&m, 32, 40, "task_create");
        if (!(m.h.bits & COMPLEX) || m.w[2] != TYPE(MOVE_SEND, 32) || !m.w[3]) fail("task_create child", m.w[2]);
        u32 child = m.w[3];
        if (round == 0) say("task_create child", child);

        /* vm_allocate(child, &address = 256 MB, one page, anywhere = FALSE) */
        const u32 address = 0x10000000;
        m = (struct msg){REQUEST(child, reply_port, 48, 2021),
                         {TYPE(INTEGER_32, 32), address, TYPE(INTEGER_32, 32), 0x1000, TYPE(BOOLEAN, 32), 0}};
        rpc(&m, 48, 40, "vm_allocate");
        if (m.w[3] != address) fail("vm_allocate address", m.w[3]);

        /* The first child: vm_wire(host_priv, child, address, one page, VM_PROT_READ | VM_PROT_WRITE), which
           enters the page in its pmap (a page table, pinned). */
        if (round == 0) {
            if (!host_priv) fail("no --host-priv-port=", 0);
            m = (struct msg){REQUEST(host_priv, reply_port, 56, 2636),
                             {TYPE(COPY_SEND, 32), child, TYPE(INTEGER_32, 32), address, TYPE(INTEGER_32, 32),
                              0x1000, TYPE(INTEGER_32, 32), 3}};
            m.h.bits |= COMPLEX;
            rpc(&m, 56, 32, "vm_wire");
            say("vm_wire in the child", address);
        }

        /* task_terminate(child) */
        m = (struct msg){REQUEST(child, reply_port, 24, 2008), {0}};
        rpc(&m, 24, 32, "task_terminate(child)");
        if (round == 0) say("task_terminate(child) returned", 0);
    }
    say("children created and terminated:", CHILDREN);

    /* task_terminate(self): no reply comes; the reaper destroys this task's pmap. */
    say("task_terminate(self)", ~0u);
    m = (struct msg){REQUEST(self, reply_port, 24, 2008), {0}};
    mach_msg_trap(&m, SEND_MSG | RCV_MSG, 24, sizeof m, reply_port, 0, 0);
    fail("task_terminate(self) returned", m.h.id);
}

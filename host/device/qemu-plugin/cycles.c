/*
 * tinyres cycle model: a QEMU TCG plugin that estimates the cycles a Cortex-M4 (or a
 * Cortex-M3, or a Cortex-M0+) core would take for the exact instruction stream QEMU
 * executes.
 *
 * Every executed instruction adds its cost from the core's Technical Reference Manual
 * timing tables (Cortex-M4 TRM r0p1, 3.3.1 "Cortex-M4 instructions"; Cortex-M3 TRM
 * r2p1, 18.2), with zero-wait-state memory for code and data (TCM or single-cycle
 * SRAM: no flash wait states, no bus contention):
 *
 *   - data processing, shifts, saturation, SIMD (SXTB16, SADD16, ...), MUL, MLA, MLS
 *     and the M4's DSP multiplies (SMLAD, SMLABB, SMULL, SMLAL, ...): 1. On the M3,
 *     MLS and MLA 2, the long multiplies 4 (UMULL, SMULL: 3 to 5 by operand), the long
 *     multiply-accumulates 5 (4 to 7);
 *   - SDIV, UDIV: 7 (2 to 12 by operand, which this model does not see: +-5 each);
 *   - LDR, LDRB, LDRH, LDRSB, LDRSH, LDREX: 2, or 1 when the instruction before it is a
 *     load single whose destination it does not use for its address ("LDR [any] are
 *     pipelined when possible"); LDR pc 3 (the load, then the refill below: 5 in all);
 *   - STR, STRB, STRH, STREX with an immediate offset: 1 (the store completes while the
 *     next instruction executes); with a register offset 2, or 1 after a load single;
 *   - any load or store whose address uses the register the instruction before it
 *     computed (data processing, not a load): 1 more ("no forwarding path");
 *   - VLDR, VSTR: 2;
 *   - LDRD, STRD: 3; LDM, STM, PUSH, POP, VLDM, VSTM, VPUSH, VPOP: 1 + N (N words);
 *   - branches: 1, and a taken branch 1 + P. P, the pipeline refill, is 1 to 3 in the
 *     TRM by target alignment and speculation; the model takes 2, plus 1 when the
 *     target is a 32-bit instruction at an address that is not word-aligned (two
 *     fetches). A write of the PC (POP {..., pc}, LDR pc, LDM with pc, BX, BLX) is a
 *     taken branch; TBB and TBH 4 + P (the load, the add, the refill);
 *   - IT: 0 when it follows a 16-bit instruction (folded), else 1;
 *   - FPU (M4F): VADD, VSUB, VMUL, VNMUL, VABS, VNEG, VCMP, VCVT, VMOV, VMRS, VMSR 1;
 *     VMOV of two core registers 2; VMLA, VMLS, VNMLA, VNMLS, VFMA, VFMS, VFNMA, VFNMS
 *     3; VDIV, VSQRT 14;
 *   - MRS, MSR, CPS, ISB, DSB, DMB: 2 (the M3's and M4's figures for their common
 *     cases); exception entry and exit (12 cycles each on both cores) are not counted.
 *
 * The Cortex-M0+ (TRM r0p1, 3.3; two-stage pipeline, ARMv6-M, the single-cycle
 * multiplier as in the RP2040): 1 cycle but for loads and stores 2 (no pipelining),
 * LDM, STM, PUSH, POP 1 + N, POP with the PC 3 + N, a taken branch 2 (P = 1), BL 3, and
 * MRS, MSR 3.
 *
 * Taken branches are found at run time: a translation block whose last instruction is
 * a branch, followed by a block that does not start where it ends. How an instruction
 * pairs with the one before it is decided when its block is translated, and for a
 * block's first instruction when the block runs, after the block that ran before.
 *
 * With core=none the plugin models no core: it counts instructions alone (every cost,
 * and so every cycle figure it writes, 0; no counter reads), for the boards without a
 * model, whose instructions by function are still worth knowing.
 *
 * Arguments: core=m4|m3|m0plus|none (default m4); out=FILE (required): at exit the plugin writes
 * `total INSNS CYCLES`, then one line `read INSNS CYCLES` for every load from the
 * address watch=ADDR (default 0xe000e018, SysTick's current value register), the totals
 * counted up to and including that load: the host pairs consecutive reads with the
 * firmware's own instruction counts between counter reads; then `block ADDRESS INSNS
 * CYCLES` for every translation block that ran, its totals (a block translated twice
 * has two lines): the host sums them by function.
 *
 * QEMU 7.2 exports the plugin API (version 1) but Debian ships no header: the few
 * declarations used are below, as qemu-plugin.h has them.
 */

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(
    qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
                                    void (*cb)(qemu_plugin_id_t, void *), void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr,
                                                uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb,
                                          void (*cb)(unsigned int, void *),
                                          enum qemu_plugin_cb_flags flags, void *userdata);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn,
                                      void (*cb)(unsigned int, qemu_plugin_meminfo_t,
                                                 uint64_t, void *),
                                      enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

/* The emulated system has one core: plain counters suffice. */
static uint64_t insns, cycles;
static enum { M4, M3, M0PLUS, NONE } core = M4;
static uint64_t watch = 0xe000e018;
static FILE *out;

/* The counter reads seen: (instructions, cycles) at each. */
static uint64_t (*reads)[2];
static size_t read_count, read_capacity;

enum kind { OTHER, LOAD, STORE_IMMEDIATE, STORE_REGISTER, BRANCH };

struct decoded {
    unsigned cost; /* cycles, before any taken-branch refill */
    enum kind kind; /* for the next instruction's pipelining */
    bool branch;    /* may change the flow (the block's refill is decided at run time) */
    int written;    /* the core register a load single or a data-processing instruction
                       wrote, or -1 */
    int address[2]; /* the registers a load's or store's address reads, or -1 */
};

/* A translation block, as the blocks executed around it need to know it. */
struct block {
    uint64_t start, end;       /* first instruction's address; the address after the last */
    bool ends_in_branch;       /* its last instruction may change the flow */
    bool wide_unaligned_start; /* its first instruction is 32-bit at a non-word address */
    char *first;               /* the first instruction's text, decoded again against the
                                  instruction executed before it */
    unsigned first_alone;      /* the first instruction's cost with none before it */
    struct decoded last;       /* the last instruction */
    bool last_wide;
    const struct block *adjusted_for; /* the block `adjustment` was computed after */
    int64_t adjustment;        /* the first instruction's cost after it, less first_alone */
    uint64_t instructions;     /* instructions, and their cycles as translated, of one */
    uint64_t cost;             /* run of the block */
    uint64_t runs;             /* times the block ran */
    uint64_t extra;            /* cycles decided as it ran: refills, its first instruction */
    struct block *next;        /* every block translated, for the report at exit */
};
static const struct block *previous;
static struct block *blocks;

static const char *const conditions[] = {"eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl",
                                         "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le",
                                         "al"};

static bool is_condition(const char *s) {
    for (size_t i = 0; i < sizeof conditions / sizeof *conditions; i++) {
        if (strcmp(s, conditions[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* Whether `mnemonic` is `base`, optionally followed by `s` (flags) and/or a condition
 * (inside an IT block), as Capstone spells them. */
static bool is(const char *mnemonic, const char *base) {
    size_t n = strlen(base);
    if (strncmp(mnemonic, base, n) != 0) {
        return false;
    }
    const char *rest = mnemonic + n;
    if (*rest == '\0' || is_condition(rest)) {
        return true;
    }
    return rest[0] == 's' && (rest[1] == '\0' || is_condition(rest + 1));
}

static bool is_any(const char *mnemonic, const char *const *bases) {
    for (; *bases; bases++) {
        if (is(mnemonic, *bases)) {
            return true;
        }
    }
    return false;
}

/* A core register number from an operand's text (r0..r12, sb, sl, fp, ip, sp, lr, pc). */
static int register_number(const char *s) {
    static const char *const names[] = {"sb", "sl", "fp", "ip", "sp", "lr", "pc"};
    if (s[0] == 'r' && s[1] >= '0' && s[1] <= '9') {
        return atoi(s + 1);
    }
    for (int i = 0; i < 7; i++) {
        if (strncmp(s, names[i], 2) == 0) {
            return 9 + i;
        }
    }
    return -1;
}

/* Words a register list `{...}` moves: core and single-precision registers count one,
 * double-precision two; ranges (`r4-r7`, `d8-d15`) expanded. */
static unsigned list_words(const char *list, bool *has_pc) {
    unsigned words = 0;
    *has_pc = false;
    const char *p = strchr(list, '{');
    if (!p) {
        return 1;
    }
    for (p++; *p && *p != '}';) {
        while (*p == ' ' || *p == ',') {
            p++;
        }
        char first_kind = *p;
        int first = (first_kind == 'd' || first_kind == 's') ? atoi(p + 1) : register_number(p);
        if (first == 15 && first_kind != 'd' && first_kind != 's') {
            *has_pc = true;
        }
        while (*p && *p != ',' && *p != '-' && *p != '}') {
            p++;
        }
        int count = 1;
        if (*p == '-') {
            p++;
            int last = (first_kind == 'd' || first_kind == 's') ? atoi(p + 1) : register_number(p);
            count = last - first + 1;
            if (last == 15) {
                *has_pc = true;
            }
            while (*p && *p != ',' && *p != '}') {
                p++;
            }
        }
        words += (unsigned)(count > 0 ? count : 1) * (first_kind == 'd' ? 2 : 1);
    }
    return words;
}

/* The registers inside the brackets of a load's or store's address: base and offset. */
static void address_registers(const char *operands, int address[2]) {
    address[0] = address[1] = -1;
    const char *bracket = strchr(operands, '[');
    if (!bracket) {
        return;
    }
    address[0] = register_number(bracket + 1);
    const char *comma = strchr(bracket, ',');
    const char *close = strchr(bracket, ']');
    if (comma && close && comma < close) {
        address[1] = register_number(comma + 1 + strspn(comma + 1, " "));
    }
}

static bool uses(const int address[2], int reg) {
    return reg >= 0 && (address[0] == reg || address[1] == reg);
}

static struct decoded decode(const char *text, const struct decoded *before, bool before_wide) {
    char mnemonic[32] = {0};
    size_t n = strcspn(text, " ");
    if (n >= sizeof mnemonic) {
        n = sizeof mnemonic - 1;
    }
    memcpy(mnemonic, text, n);
    const char *operands = text + n + strspn(text + n, " ");
    /* Width qualifiers (.w, .n) do not change the timing; data types (.f32, .s32,
     * .64) do not either. */
    char *dot = strchr(mnemonic, '.');
    if (dot) {
        *dot = '\0';
    }
    struct decoded d = {1, OTHER, false, -1, {-1, -1}};
    int first_operand = register_number(operands);
    bool writes_pc = first_operand == 15;

    static const char *const loads[] = {"ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "ldrex",
                                        "ldrexb", "ldrexh", "ldrt", "ldrbt", "ldrht",
                                        "ldrsbt", "ldrsht", NULL};
    static const char *const stores[] = {"str", "strb", "strh", "strex", "strexb", "strexh",
                                         "strt", "strbt", "strht", NULL};
    static const char *const multiples[] = {"ldm", "ldmia", "ldmdb", "ldmfd", "ldmea", "stm",
                                            "stmia", "stmdb", "stmfd", "stmea", "push", "pop",
                                            "vldm", "vldmia", "vldmdb", "vstm", "vstmia",
                                            "vstmdb", "vpush", "vpop", NULL};
    static const char *const fp_multiply_accumulate[] = {
        "vmla", "vmls", "vnmla", "vnmls", "vfma", "vfms", "vfnma", "vfnms", NULL};
    static const char *const system[] = {"mrs", "msr", "cps", "cpsie", "cpsid", "isb",
                                         "dsb", "dmb", NULL};
    static const char *const no_destination[] = {"cmp", "cmn", "tst", "teq", "nop", "it",
                                                 "wfi", "wfe", "sev", "bkpt", "svc", NULL};
    static const char *const m3_long_multiply[] = {"umull", "smull", NULL};
    static const char *const m3_long_accumulate[] = {"umlal", "smlal", NULL};

    if (strcmp(mnemonic, "b") == 0 || (mnemonic[0] == 'b' && is_condition(mnemonic + 1)) ||
        is(mnemonic, "bl") || is(mnemonic, "blx") || is(mnemonic, "bx") ||
        is(mnemonic, "cbz") || is(mnemonic, "cbnz")) {
        d.branch = true;
        d.kind = BRANCH;
        /* The M0+'s BL is 3 cycles: 2 and the refill. */
        d.cost = core == M0PLUS && strcmp(mnemonic, "bl") == 0 ? 2 : 1;
        return d;
    }
    if (is(mnemonic, "tbb") || is(mnemonic, "tbh")) {
        d.cost = 4;
        d.branch = true;
        d.kind = BRANCH;
        return d;
    }
    bool is_load = is_any(mnemonic, loads);
    bool is_store = is_any(mnemonic, stores);
    bool is_double = is(mnemonic, "ldrd") || is(mnemonic, "strd");
    bool is_fp_transfer = is(mnemonic, "vldr") || is(mnemonic, "vstr");
    if (is_load || is_store || is_double || is_fp_transfer) {
        address_registers(operands, d.address);
        /* No forwarding from a data-processing result to an address. */
        unsigned stall = before && before->kind == OTHER && uses(d.address, before->written);
        if (core == M0PLUS) {
            d.kind = is_load ? LOAD : OTHER;
            d.cost = 2;
            d.branch = is_load && writes_pc;
        } else if (is_load) {
            d.kind = LOAD;
            d.written = first_operand;
            bool pipelined = before && before->kind == LOAD && !uses(d.address, before->written);
            d.cost = (writes_pc ? 3 : pipelined ? 1 : 2) + stall;
            d.branch = writes_pc;
        } else if (is_store) {
            bool register_offset = d.address[1] >= 0;
            d.kind = register_offset ? STORE_REGISTER : STORE_IMMEDIATE;
            d.cost = (register_offset && !(before && before->kind == LOAD) ? 2 : 1) + stall;
        } else {
            d.cost = (is_double ? 3 : 2) + stall;
        }
        return d;
    }
    if (is_any(mnemonic, multiples)) {
        bool has_pc = false;
        d.cost = 1 + list_words(operands, &has_pc);
        d.branch = has_pc;
        /* The M0+'s POP {..., pc}: 3 + N, the refill included. */
        d.cost += core == M0PLUS && has_pc ? 1 : 0;
        return d;
    }
    if (mnemonic[0] == 'i' && mnemonic[1] == 't' &&
        strspn(mnemonic + 1, "te") == strlen(mnemonic + 1)) {
        d.cost = before && !before_wide ? 0 : 1;
        return d;
    }
    if (!is_any(mnemonic, no_destination)) {
        d.written = first_operand;
    }
    if (is(mnemonic, "sdiv") || is(mnemonic, "udiv")) {
        d.cost = 7;
    } else if (is_any(mnemonic, fp_multiply_accumulate)) {
        d.cost = 3;
    } else if (is(mnemonic, "vdiv") || is(mnemonic, "vsqrt")) {
        d.cost = 14;
    } else if (is(mnemonic, "vmov")) {
        /* vmov r0, r1, d0 / vmov d0, r0, r1: two core registers. */
        int commas = 0;
        for (const char *p = operands; *p; p++) {
            commas += *p == ',';
        }
        d.cost = commas == 2 ? 2 : 1;
    } else if (is_any(mnemonic, system)) {
        d.cost = core == M0PLUS ? 3 : 2;
    } else if (core == M3 && (is(mnemonic, "mla") || is(mnemonic, "mls"))) {
        d.cost = 2;
    } else if (core == M3 && is_any(mnemonic, m3_long_multiply)) {
        d.cost = 4;
    } else if (core == M3 && is_any(mnemonic, m3_long_accumulate)) {
        d.cost = 5;
    } else if (writes_pc && d.written == 15) {
        /* mov pc, rN; add pc, ...: a write of the PC. */
        d.branch = true;
    }
    return d;
}

/* At the start of every block: the refill of the branch that ended the block before,
 * if it was taken (this block does not start where that one ended), and the first
 * instruction's cost after the last one executed (pipelining, an address stall, a
 * folded IT). Blocks run whole or not at all: QEMU checks the instruction budget of
 * -icount before a block's first instruction, and a block ends at the budget. */
static void block_start(unsigned int vcpu, void *userdata) {
    (void)vcpu;
    struct block *current = userdata;
    current->runs++;
    if (previous && core != NONE) {
        uint64_t extra = 0;
        if (previous->ends_in_branch && current->start != previous->end) {
            extra += core == M0PLUS ? 1 : 2 + (current->wide_unaligned_start ? 1 : 0);
        }
        if (current->adjusted_for != previous) {
            struct decoded after = decode(current->first, &previous->last, previous->last_wide);
            current->adjustment = (int64_t)after.cost - (int64_t)current->first_alone;
            current->adjusted_for = previous;
        }
        extra += (uint64_t)current->adjustment;
        cycles += extra;
        current->extra += extra;
    }
    previous = current;
}

static void counter_read(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t address,
                         void *userdata) {
    (void)vcpu;
    (void)userdata;
    if (address != watch || qemu_plugin_mem_is_store(info)) {
        return;
    }
    if (read_count == read_capacity) {
        read_capacity = read_capacity ? 2 * read_capacity : 1024;
        reads = realloc(reads, read_capacity * sizeof *reads);
        if (!reads) {
            abort();
        }
    }
    reads[read_count][0] = insns;
    reads[read_count][1] = cycles;
    read_count++;
}

static void translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (n == 0) {
        return;
    }
    /* Translations of the same code may repeat (QEMU flushes its cache); the few bytes
     * of each block are kept for the plugin's life. */
    struct block *block = calloc(1, sizeof *block);
    if (!block) {
        abort();
    }
    struct decoded before = {0};
    bool have_before = false, before_wide = false;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t address = qemu_plugin_insn_vaddr(insn);
        bool wide = qemu_plugin_insn_size(insn) == 4;
        char *text = qemu_plugin_insn_disas(insn);
        struct decoded d = {0, OTHER, false, -1, {-1, -1}};
        if (core != NONE) {
            d = decode(text ? text : "", have_before ? &before : NULL, before_wide);
        }
        if (i == 0) {
            block->start = address;
            block->wide_unaligned_start = wide && (address & 3) != 0;
            block->first = strdup(text ? text : "");
            if (!block->first) {
                abort();
            }
            block->first_alone = d.cost;
        }
        if (i == n - 1) {
            block->end = address + qemu_plugin_insn_size(insn);
            block->ends_in_branch = d.branch;
            block->last = d;
            block->last_wide = wide;
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &insns, 1);
        if (d.cost) {
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                       &cycles, d.cost);
        }
        block->instructions++;
        block->cost += d.cost;
        if (d.kind == LOAD) {
            /* Reads and writes: QEMU 7.2 calls a callback registered for reads alone
             * (QEMU_PLUGIN_MEM_R) for some loads only; the callback skips stores. */
            qemu_plugin_register_vcpu_mem_cb(insn, counter_read, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, NULL);
        }
        free(text);
        before = d;
        have_before = true;
        before_wide = wide;
    }
    block->next = blocks;
    blocks = block;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_start, QEMU_PLUGIN_CB_NO_REGS, block);
}

static void finish(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    fprintf(out, "total %" PRIu64 " %" PRIu64 "\n", insns, cycles);
    for (size_t i = 0; i < read_count; i++) {
        fprintf(out, "read %" PRIu64 " %" PRIu64 "\n", reads[i][0], reads[i][1]);
    }
    for (const struct block *b = blocks; b; b = b->next) {
        if (b->runs) {
            fprintf(out, "block %#" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->start,
                    b->runs * b->instructions, b->runs * b->cost + b->extra);
        }
    }
    fclose(out);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                               char **argv) {
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "core=m4") == 0) {
            core = M4;
        } else if (strcmp(argv[i], "core=m3") == 0) {
            core = M3;
        } else if (strcmp(argv[i], "core=m0plus") == 0) {
            core = M0PLUS;
        } else if (strcmp(argv[i], "core=none") == 0) {
            core = NONE;
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else if (strncmp(argv[i], "watch=", 6) == 0) {
            watch = strtoull(argv[i] + 6, NULL, 0);
        } else {
            fprintf(stderr, "tinyres cycles plugin: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (!path || !(out = fopen(path, "w"))) {
        fprintf(stderr, "tinyres cycles plugin: out=FILE is required and must be writable\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, translate);
    qemu_plugin_register_atexit_cb(id, finish, NULL);
    return 0;
}

#!/usr/bin/env python3
"""Cortex-M4F cycle estimate from the firmware's dynamic instruction mix under QEMU.

QEMU counts instructions exactly (`-icount`), not cycles, and no cycle-accurate M4
simulator installs from the package registries. So: QEMU logs every translated block
(`-d in_asm`: its instructions) and every execution of one (`-d exec,nochain`); this
script replays that trace, prices each executed instruction with the timing model
below, and sums the cycles between the firmware's phase marks (`pursamere_phase_mark`,
built with the `layer-profile` feature): the image loop and each layer's forward and
VJP (scripts/fw-cycle-estimate.sh runs it all).

The timing model, from the Arm Cortex-M4 Technical Reference Manual (r0p1, 3.3.1
"Cortex-M4 instruction timings", and 7.2.3 "FPU instruction set" — cycles per
instruction on a zero-wait-state memory system):

- data processing, shifts, compares, MOV/MVN, MUL, MLA/MLS, 32×32→64 multiplies,
  extend/saturate/bit-field: 1; SDIV/UDIV: 2–12, priced 7;
- LDR/LDRB/LDRH/LDRSB/LDRSH and STR*: 2, but 1 when it directly follows another
  single load or store (their address and data phases pipeline); LDRD/STRD: 3;
  LDM/STM/PUSH/POP: 1 + N registers (+ P when POP loads the PC);
- branches B/BL/BX/BLX, CBZ/CBNZ and any instruction writing the PC: 1 + P when taken,
  with P = 2 (the manual gives 1–3 for the pipeline refill), 1 when not taken;
  TBB/TBH: 2 + P; IT: 1 (it can fold into the previous 16-bit instruction: an upper
  bound);
- FPU: VADD/VSUB/VMUL/VNMUL/VABS/VNEG/VCMP/VCVT/VMOV/VMRS/VMSR: 1 (a 64-bit VMOV
  between two core registers and a D register: 2); VMLA/VMLS/VNMLA/VNMLS/VFMA/VFMS:
  3; VDIV/VSQRT: 14; VLDR/VSTR: 2 (single), 3 (double), pipelined like LDR/STR;
  VLDM/VSTM/VPUSH/VPOP: 1 + N single registers;
- BKPT (semihosting, the console) and anything unrecognised: 1.

Not modelled: flash wait states (an STM32F4 at 168 MHz needs 5; its ART accelerator
hides most of them for straight-line code and loops), FPU result latencies between
dependent instructions (the M4's FPU is in-order: a VADD waiting on the previous VMUL
stalls a cycle or so), and branch-target alignment. So the estimate is for
zero-wait-state memory; read it as ±20 %.

Usage: fw_cycle_estimate.py QEMU_LOG FIRMWARE_STDOUT [NETWORK:LAYER]

With NETWORK:LAYER (e.g. `classifier:0`), also the translated blocks that cost most
in that layer's forward pass (start address, executions, instructions, cycles): where
a kernel's time goes, to read against `llvm-objdump -d` of the firmware.
"""

import os
import re
import sys
from collections import defaultdict

INSN = re.compile(r"^0x([0-9a-f]+):\s+([0-9a-f]{4})(?: ([0-9a-f]{4}))?\s+(\S+)\s*(.*)$")
TRACE = re.compile(r"^Trace \d+: (0x[0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/[^\]]*\]\s*(.*)$")
CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")
P = 2  # pipeline refill after a taken branch, cycles
MARK = "pursamere_phase_mark"


KNOWN = {
    "add", "adc", "sub", "sbc", "rsb", "mov", "mvn", "and", "orr", "orn", "eor", "bic",
    "lsl", "lsr", "asr", "ror", "rrx", "cmp", "cmn", "tst", "teq", "mul", "mla", "mls",
    "ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "str", "strb", "strh", "ldrd", "strd",
    "uxtb", "uxth", "sxtb", "sxth", "ubfx", "sbfx", "bfi", "bfc", "clz", "rev", "movw",
    "movt", "umull", "smull", "umlal", "smlal", "sdiv", "udiv", "adr", "ldm", "stm",
}


def regs_in_list(ops):
    inside = ops[ops.find("{") + 1 : ops.find("}")]
    n = 0
    for part in inside.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            n += int(b.strip()[1:]) - int(a.strip()[1:]) + 1
        elif part:
            n += 1
    return n


def cost(mn, ops, prev_mem, taken):
    """(cycles, is a single load/store) of one executed instruction."""
    m = mn.split(".")[0]
    # Condition suffixes on ARM mnemonics (`movlo`, `ldrne`, `bxeq` …).
    for c in CONDS:
        if m.endswith(c) and m[: -len(c)] in KNOWN | {"b", "bl", "bx", "blx"} | {k + "s" for k in KNOWN}:
            m = m[: -len(c)]
            break
    if m.endswith("s") and m[:-1] in KNOWN:
        m = m[:-1]
    if m in ("b", "bl", "bx", "blx", "cbz", "cbnz"):
        return (1 + P if taken else 1), False
    if m in ("tbb", "tbh"):
        return 2 + P, False
    if m.startswith("it"):
        return 1, False
    if m in ("ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "str", "strb", "strh", "ldrex", "strex"):
        c = 1 if prev_mem else 2
        if m == "ldr" and ops.startswith("pc"):
            c += P
        return c, True
    if m in ("ldrd", "strd"):
        return 3, False
    if m in ("ldm", "stm", "push", "pop", "ldmia", "stmia", "ldmdb", "stmdb"):
        n = regs_in_list(ops)
        return 1 + n + (P if "pc" in ops else 0), False
    if m in ("sdiv", "udiv"):
        return 7, False
    if m.startswith("v"):
        v = m
        if v in ("vldr", "vstr"):
            c = (1 if prev_mem else 2) + (1 if ops.lstrip().startswith("d") else 0)
            return c, True
        if v in ("vldm", "vstm", "vpush", "vpop", "vldmia", "vstmia", "vldmdb", "vstmdb"):
            n = regs_in_list(ops)
            if ops.strip().split("{")[-1].strip().startswith("d"):
                n *= 2
            return 1 + n, False
        if v in ("vmla", "vmls", "vnmla", "vnmls", "vfma", "vfms", "vfnma", "vfnms"):
            return 3, False
        if v in ("vdiv", "vsqrt"):
            return 14, False
        if v == "vmov" and ops.count(",") == 2:
            return 2, False
        return 1, False
    return 1, False


def main():
    log_path, out_path = sys.argv[1], sys.argv[2]
    focus = sys.argv[3] if len(sys.argv) > 3 else None
    blocks = {}  # (host pointer, pc) -> [(addr, size, mnemonic, operands)]
    pending = None
    executed = []  # (key, function name) in execution order
    with open(log_path, errors="replace") as f:
        for line in f:
            if line.startswith("IN:"):
                pending = []
                continue
            m = INSN.match(line)
            if m and pending is not None:
                size = 4 if m.group(3) else 2
                pending.append((int(m.group(1), 16), size, m.group(4), m.group(5)))
                continue
            t = TRACE.match(line)
            if t:
                key = (t.group(1), int(t.group(2), 16))
                if pending:
                    if pending[0][0] == key[1]:
                        blocks[key] = pending
                    pending = None
                executed.append((key, t.group(3).strip()))
    # Replay: price each executed block; a block's last instruction is a taken
    # branch when the next block does not start right after it.
    windows = []  # (instructions, cycles) between consecutive marks
    cur_insns = cur_cycles = 0
    total_insns = total_cycles = 0
    by_fn = defaultdict(lambda: [0, 0])
    by_block = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))  # window -> pc -> [runs, insns, cycles]
    started = False
    for idx, (key, fn) in enumerate(executed):
        body = blocks.get(key)
        if body is None:
            continue
        if MARK in fn:
            if started:
                windows.append((cur_insns, cur_cycles))
            started = True
            cur_insns = cur_cycles = 0
            continue
        nxt = executed[idx + 1][0][1] if idx + 1 < len(executed) else None
        prev_mem = False
        # Per-block costs only when a layer is asked for (a dict update per block).
        block = by_block[len(windows)][key[1]] if focus else [0, 0, 0]
        block[0] += 1
        for j, (addr, size, mn, ops) in enumerate(body):
            last = j == len(body) - 1
            taken = last and nxt is not None and nxt != addr + size
            c, mem = cost(mn, ops, prev_mem, taken)
            prev_mem = mem
            cur_insns += 1
            cur_cycles += c
            total_insns += 1
            total_cycles += c
            by_fn[fn][0] += 1
            by_fn[fn][1] += c
            block[1] += 1
            block[2] += c
    layers = []
    images = 1
    with open(out_path, errors="replace") as f:
        for line in f:
            w = line.split()
            if w[:1] == ["layer"] and "macs" in w:
                layers.append((w[1], int(w[2]), w[3], int(w[5])))
            if w[:2] == ["done", "ok"]:
                images = int(w[2])
    print(f"whole run: {total_insns} instructions, {total_cycles} cycles estimated "
          f"({total_cycles / max(total_insns, 1):.2f} cycles per instruction)")
    if windows:
        ins, cyc = windows[0]
        print(f"purify + classify per image: {ins / images:.0f} instructions, "
              f"{cyc / images:.0f} cycles ({cyc / images / 168e3:.1f} ms at 168 MHz; "
              f"{cyc / max(ins, 1):.2f} cycles per instruction)")
    print()
    print("| network | layer | kind | MACs | forward instructions | forward cycles | "
          "cycles/MAC | VJP instructions | VJP cycles | cycles/MAC |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, (net, i, kind, macs) in enumerate(layers):
        # Marks: image loop start and end, then per layer before the forward,
        # between forward and VJP, after the VJP (the gaps between layers are the
        # console lines and timers: not counted).
        if 3 + 3 * k >= len(windows):
            break
        (fi, fc), (vi, vc) = windows[2 + 3 * k], windows[3 + 3 * k]
        per = (lambda c: f"{c / macs:.2f}") if macs else (lambda c: "–")
        print(f"| {net} | {i} | {kind} | {macs} | {fi} | {fc} | {per(fc)} | {vi} | {vc} | {per(vc)} |")
    if focus:
        for k, (net, i, kind, macs) in enumerate(layers):
            if f"{net}:{i}" != focus:
                continue
            blocks_k = by_block[2 + 3 * k]
            # PURSAMERE_BLOCKS=N lists N blocks instead of 20.
            top = int(os.environ.get("PURSAMERE_BLOCKS", "20"))
            total = sum(b[2] for b in blocks_k.values()) or 1
            print()
            print(f"blocks of {net} layer {i} ({kind}) forward, by cycles "
                  "(start address, executions, instructions, cycles, share):")
            for pc, (runs, ins, cyc) in sorted(blocks_k.items(), key=lambda kv: -kv[1][2])[:top]:
                print(f"  {pc:08x} {runs:>8} {ins:>9} {cyc:>9} {100 * cyc / total:5.1f} %")
    print()
    print("heaviest functions over the whole run (instructions, cycles, cycles per instruction):")
    for fn, (ins, cyc) in sorted(by_fn.items(), key=lambda kv: -kv[1][1])[:8]:
        print(f"  {ins:>10} {cyc:>10} {cyc / max(ins, 1):5.2f}  {fn[:90]}")


if __name__ == "__main__":
    main()

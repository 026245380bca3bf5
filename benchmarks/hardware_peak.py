"""The CPU's peak multiply-add rate (float32 and int8), derived from /proc/cpuinfo and lscpu.

peak = cores x vector multiply-add units per core x multiply-adds per vector instruction x clock

- multiply-adds per instruction come from the ISA flags: float32 FMA on 512-bit vectors
  (avx512f) is 16, on 256-bit (avx2 + fma) 8; int8 VPDPBUSD (avx512_vnni) is 64 (16 int32
  lanes x 4 byte products), avx_vnni 32; without VNNI the VPMADDUBSW + VPMADDWD pair is counted
  as half the VNNI rate. AMX tiles are not counted (the TFLite/XNNPACK kernels measured here are
  vector kernels).
- units per core: ASSUMED 2 (two FMA ports, as on Xeon Scalable Gold/Platinum and client cores
  since Haswell); `--units` changes it.
- clock: lscpu's "CPU max MHz" when present, else the largest "cpu MHz" in /proc/cpuinfo (under
  a hypervisor the nominal clock; turbo may run higher, AVX-512 code lower).
- cores: physical cores (logical CPUs / threads per core), capped by the threads used.

inference_latency.py uses it to print how far TFLite's achieved multiply-adds/s are from peak.

    .venv/bin/python benchmarks/hardware_peak.py          # the derivation and the peaks per core count
    .venv/bin/python benchmarks/hardware_peak.py --smoke  # the same (it measures nothing)
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from _common import cpu_model, lscpu, table

ASSUMED_UNITS = 2


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def clock() -> tuple[float, str]:
    """(GHz, where the figure came from)."""
    info = lscpu()
    if info.get("CPU max MHz"):
        return float(info["CPU max MHz"]) / 1000, "lscpu 'CPU max MHz'"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            mhz = [float(line.split(":")[1]) for line in cpuinfo if line.startswith("cpu MHz")]
        return max(mhz) / 1000, "/proc/cpuinfo 'cpu MHz' (no max MHz reported)"
    except (OSError, ValueError) as error:
        raise RuntimeError("No clock rate in lscpu or /proc/cpuinfo; cannot derive the CPU's peak.") from error


def physical_cores() -> int:
    per_core = int(lscpu().get("Thread(s) per core", "1") or 1)
    return max(1, len(os.sched_getaffinity(0)) // per_core)


@dataclasses.dataclass(frozen=True)
class Peak:
    cores: int
    ghz: float
    clock_source: str
    units: int
    float32_per_instruction: int
    float32_isa: str
    int8_per_instruction: int
    int8_isa: str
    note: str = ""

    def float32(self, threads: int) -> float:
        """Multiply-adds per second with `threads` threads (one per physical core)."""
        return min(threads, self.cores) * self.units * self.float32_per_instruction * self.ghz * 1e9

    def int8(self, threads: int) -> float:
        return min(threads, self.cores) * self.units * self.int8_per_instruction * self.ghz * 1e9

    def derivation(self) -> str:
        core = self.units * self.ghz
        return "\n".join(
            [
                f"Peak of {cpu_model()}: {self.cores} physical core(s) at {self.ghz:.2f} GHz ({self.clock_source}), "
                f"{self.units} vector multiply-add units per core (assumed).",
                f"- float32: {self.float32_isa}: {self.float32_per_instruction} multiply-adds per instruction; "
                f"{self.float32_per_instruction} x {self.units} x {self.ghz:.2f} GHz = "
                f"{self.float32_per_instruction * core:.1f} G multiply-adds/s per core",
                f"- int8: {self.int8_isa}: {self.int8_per_instruction} multiply-adds per instruction; "
                f"{self.int8_per_instruction} x {self.units} x {self.ghz:.2f} GHz = "
                f"{self.int8_per_instruction * core:.1f} G multiply-adds/s per core",
            ]
            + ([self.note] if self.note else [])
        )


def cpu_peak(units: int = ASSUMED_UNITS) -> Peak:
    flags = cpu_flags()
    if "avx512f" in flags:
        float32 = (16, "AVX-512 FMA (avx512f), 16 float32 lanes")
    elif {"avx2", "fma"} <= flags:
        float32 = (8, "AVX2 FMA (avx2, fma), 8 float32 lanes")
    else:
        float32 = (4, "no FMA flags: SSE, 4 float32 lanes counted as one multiply-add each")
    if "avx512_vnni" in flags:
        int8 = (64, "VPDPBUSD on 512-bit vectors (avx512_vnni), 16 lanes x 4 byte products")
    elif "avx_vnni" in flags:
        int8 = (32, "VPDPBUSD on 256-bit vectors (avx_vnni), 8 lanes x 4 byte products")
    elif "avx512bw" in flags:
        int8 = (32, "no VNNI: VPMADDUBSW + VPMADDWD on 512-bit vectors (avx512bw), 64 products per 2 instructions")
    else:
        int8 = (16, "no VNNI: VPMADDUBSW + VPMADDWD on 256-bit vectors (avx2), 32 products per 2 instructions")
    ghz, source = clock()
    note = "- AMX tiles (amx_int8) are present and not counted." if "amx_int8" in flags else ""
    return Peak(physical_cores(), ghz, source, units, *float32, *int8, note)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=ASSUMED_UNITS, help="vector multiply-add units per core")
    parser.add_argument("--smoke", action="store_true", help="accepted for uniformity; measures nothing anyway")
    args = parser.parse_args()
    peak = cpu_peak(args.units)
    print(peak.derivation() + "\n")
    print(
        table(
            ("cores", "float32 peak (G multiply-adds/s)", "int8 peak (G multiply-adds/s)"),
            [(n, f"{peak.float32(n) / 1e9:.1f}", f"{peak.int8(n) / 1e9:.1f}") for n in range(1, peak.cores + 1)],
        )
    )


if __name__ == "__main__":
    main()

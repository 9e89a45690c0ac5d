// The subcommands of mesaserve-bench (bench_main.cc), each in its own file.
#pragma once

namespace mesa::bench {

// mesaserve-bench kernels: decode layer-step and chunked prefill of one layer (kernel_bench.cc).
int KernelsMain(int argc, char** argv);
// mesaserve-bench model: whole-model prefill and decode steps (model_bench.cc); not in a
// kernels-only build (MESA_KERNELS_ONLY), which has no engine or checkpoint loader.
int ModelMain(int argc, char** argv);

}  // namespace mesa::bench

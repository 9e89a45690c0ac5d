// mesaserve-bench: the GPU benchmarks in one binary without gRPC, protobuf or sentencepiece, so
// it runs on a bare CUDA machine as is (tools/cuda/pack_gpurun.sh carries it with the few
// libraries such a machine lacks; tools/cuda/gpu_run.sh runs it next to fla's kernels and fla's
// Hugging Face model on the same card). Results and method: docs/benchmarks.md.
//
//   mesaserve-bench kernels [flags]   one layer: fused decode step, chunked prefill
//   mesaserve-bench model [flags]     the whole model: prefill, decode steps (random 1.3B or a
//                                     checkpoint directory)
//   mesaserve-bench <command> --help  the command's flags
#include <cstdio>
#include <cstring>

#include "tools/bench/bench_commands.h"

namespace {

int Usage(int code) {
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: mesaserve-bench kernels [--heads N] [--head-dim K] [--batches 1,8,64,256] "
               "[--reps N] [--prefill 2048,8192] [--prefill-seqs 1,16]\n"
#ifdef MESA_BENCH_WITH_MODEL
               "       mesaserve-bench model (--random-1.3b | --model DIR) [--batches 1,8,64,256] "
               "[--steps N] [--eager] [--prefill T] [--prefill-segment N] [--prefill-seqs S]\n"
#endif
  );
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage(2);
  if (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) return Usage(0);
  // The subcommand sees its name as argv[0].
  if (std::strcmp(argv[1], "kernels") == 0) return mesa::bench::KernelsMain(argc - 1, argv + 1);
#ifdef MESA_BENCH_WITH_MODEL
  if (std::strcmp(argv[1], "model") == 0) return mesa::bench::ModelMain(argc - 1, argv + 1);
#endif
  std::fprintf(stderr, "mesaserve-bench: unknown command '%s'\n", argv[1]);
  return Usage(2);
}

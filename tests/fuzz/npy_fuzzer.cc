// Fuzz target: ReadNpy (base/npy.h), the .npy reader of the test goldens and the `logits`
// command, on arbitrary file contents (handed over through an in-memory file).
//
// Invariants checked beyond "no crash, no sanitizer report, no escaping exception": an
// accepted file has a supported dtype, a non-negative element count, and exactly that many
// values in the vector its dtype fills (the other one empty).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/npy.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

int InputFd() {
  static const int fd = [] {
    const int f = memfd_create("fuzz.npy", 0);
    if (f < 0) mesa::fuzz::Fail(__FILE__, __LINE__, "memfd_create", "cannot create an in-memory file");
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesa;
  const int fd = InputFd();
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    fuzz::Fail(__FILE__, __LINE__, "write", "cannot write the in-memory file");
  }
  auto array = ReadNpy(absl::StrCat("/proc/self/fd/", fd));
  if (!array.ok()) return 0;
  const NpyArray& a = *array;
  const int64_t n = a.num_elements();
  FUZZ_CHECK(n >= 0, absl::StrCat("negative element count ", n));
  for (int64_t d : a.shape) FUZZ_CHECK(d >= 0, absl::StrCat("negative dimension ", d));
  if (a.descr == "<f4" || a.descr == "<f2") {
    FUZZ_CHECK(static_cast<int64_t>(a.f32.size()) == n && a.ints.empty(), a.descr);
  } else {
    FUZZ_CHECK(a.descr == "<i4" || a.descr == "<i8", "unsupported dtype accepted: " + a.descr);
    FUZZ_CHECK(static_cast<int64_t>(a.ints.size()) == n && a.f32.empty(), a.descr);
  }
  return 0;
}

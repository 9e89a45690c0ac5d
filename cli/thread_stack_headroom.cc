// Room for static TLS in threads that ask for a small stack.
//
// glibc places a thread's static TLS (the thread-local storage of every library loaded at
// start) inside the stack size the thread asked for. libcublasLt, which the CUDA backend links,
// has 94 KiB of it, and civetweb (prometheus-cpp's HTTP server, Debian build) starts its
// threads with 100 KiB stacks: pthread_create then fails with EINVAL and the metrics listener
// cannot start ("null context when constructing CivetServer"), on every machine, GPU or not.
// This definition, found before libc's by the dynamic linker, adds the headroom to any stack
// size a library sets; threads that keep the default stack (8 MiB) are not affected.
#include <dlfcn.h>
#include <pthread.h>

#include <cstddef>

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stacksize) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kStaticTlsHeadroom = size_t{256} << 10;
  if (real == nullptr) return 0;  // cannot happen with glibc; the default stack is then kept
  return real(attr, stacksize + kStaticTlsHeadroom);
}

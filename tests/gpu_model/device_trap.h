// A kernel that faults on purpose, for the device-fault test: it leaves the CUDA context with
// a sticky error, as a real memory fault in one of our kernels would.
#pragma once

namespace mesa::testing {

// Launches the faulting kernel on the legacy default stream and returns without waiting.
void LaunchDeviceTrap();

}  // namespace mesa::testing

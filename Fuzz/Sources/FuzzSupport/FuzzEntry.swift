#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import CFuzzDriver

/// Starts libFuzzer, which calls the target's `LLVMFuzzerTestOneInput` once per input.
public func runFuzzer() -> Never {
    // Only errors are logged: the harnesses provoke warnings on purpose, millions of times.
    Log.setLevel(.error)
    // A peer that went away is an ordinary outcome for the socket harnesses, not a signal.
    signal(SIGPIPE, SIG_IGN)
    exit(blockd_fuzz_main(CommandLine.argc, CommandLine.unsafeArgv))
}

/// The raw input of one run.
public func fuzzBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

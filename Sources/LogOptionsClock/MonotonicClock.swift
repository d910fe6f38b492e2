#if canImport(Glibc)
import Glibc
#endif

/// The monotonic clock (CLOCK_MONOTONIC), for latencies, deadlines and systemd's MONOTONIC_USEC.
public enum MonotonicClock {
    /// Nanoseconds since an arbitrary start.
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Seconds since the same start.
    public static func seconds() -> Double {
        Double(nanoseconds()) / 1e9
    }
}

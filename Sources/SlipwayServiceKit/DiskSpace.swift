import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a failure message adds when the filesystem under a service's data is (nearly) full: the
/// cause a person can act on, rather than whatever a tool made of ENOSPC.
public enum DiskSpace {
    /// Below this many free bytes a filesystem counts as full.
    public static let fullBelow: UInt64 = 64 << 20

    /// Bytes free for unprivileged use on the filesystem holding `path` (nil: cannot tell).
    public static func available(_ path: String) -> UInt64? {
        var stats = statvfs()
        guard statvfs(path, &stats) == 0 else { return nil }
        return UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
    }

    /// " (the filesystem holding <path> is full: N MiB free)" when it is, else "".
    public static func fullNote(_ path: String) -> String {
        guard let free = available(path), free < fullBelow else { return "" }
        return " (the filesystem holding \(path) is full: \(free >> 20) MiB free; free some space and deploy again)"
    }
}

import CSlipwaySpawn
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Disk space of files written by child processes (an instance's output files).
public enum FileSpace {
    /// Gives back the blocks of `path` before `offset`, rounded down to `granule` (a hole is
    /// punched: the size stays, the process writing it goes on appending, reads there return
    /// zeros). Punching a range again costs next to nothing. Returns false if the file system
    /// refused or the file is not there.
    @discardableResult
    public static func release(_ path: String, before offset: UInt64, granule: UInt64 = 64 * 1024) -> Bool {
        let length = offset / granule * granule
        guard length > 0 else { return true }
        let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return slipway_punch_hole(fd, Int64(length)) == 0
    }
}

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Files replaced whole: written under a temporary name with their final permissions (never readable
/// by others, even for a moment), flushed, renamed over the old one, and the directory flushed.
/// A crash leaves the old content or the new, never a mix.
public enum AtomicFile {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func write(_ data: some DataProtocol, to path: String, mode: mode_t = 0o600) throws(Failure) {
        let bytes = Array(data)
        // A name of its own: two writers of one file never write into each other's temporary file.
        let temporary = path + ".new-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        // open's mode is filtered by the umask; make it exact.
        fchmod(fd, mode)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count && fsync(fd) == 0
        close(fd)
        guard written, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        let directory = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
    }

    public static func write(_ text: String, to path: String, mode: mode_t = 0o600) throws(Failure) {
        try write(Array(text.utf8), to: path, mode: mode)
    }
}

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Directories an isolated process must pass through.
public enum LocalDirectories {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// An isolated process's root is an unprivileged uid that must pass through every directory
    /// above its root filesystem (runc binds it as that uid). The last `owned` directories of
    /// `path` (the service's own and the data directory above them) get search permission for
    /// others where they lack it (search, not read: nothing can be listed); a directory higher up
    /// without it is an error that says what to do.
    public static func searchable(_ path: String, owned: Int) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        var components = absolute.split(separator: "/").map(String.init)
        var owned = owned
        while !components.isEmpty {
            let directory = "/" + components.joined(separator: "/")
            var info = stat()
            guard stat(directory, &info) == 0 else { throw Failure(description: "cannot read \(directory): \(String(cString: strerror(errno)))") }
            if info.st_mode & S_IXOTH == 0 {
                guard owned > 0 else {
                    throw Failure(description: "isolated processes run as unprivileged uids, which cannot pass through \(directory) (mode \(String(info.st_mode & 0o777, radix: 8))): `chmod o+x \(directory)`, or choose a data directory elsewhere")
                }
                guard chmod(directory, (info.st_mode & 0o7777) | S_IXOTH) == 0 else {
                    throw Failure(description: "cannot let isolated processes pass through \(directory): \(String(cString: strerror(errno)))")
                }
            }
            owned -= 1
            components.removeLast()
        }
    }
}

import Foundation
import SlipwayProtos

#if canImport(Glibc)
import Glibc
#endif

/// One append-only segment file of a stream: records `[u32 length][u32 crc32][LogLine]` (big-endian),
/// named after its first sequence number.
struct Segment: Sendable {
    let path: String
    let firstSeq: UInt64
    var lastSeq: UInt64
    var firstTimestamp: Int64
    var lastTimestamp: Int64
    var bytes: Int
    /// Every `indexStride`-th record: (seq, byte offset), for seeking.
    var index: [(seq: UInt64, offset: Int)]

    static let indexStride: UInt64 = 64
    static let headerBytes = 8

    static func fileName(firstSeq: UInt64) -> String { String(format: "%020llu.log", firstSeq) }

    init(path: String, firstSeq: UInt64) {
        self.path = path
        self.firstSeq = firstSeq
        self.lastSeq = firstSeq - 1
        self.firstTimestamp = 0
        self.lastTimestamp = 0
        self.bytes = 0
        self.index = []
    }

    var isEmpty: Bool { lastSeq < firstSeq }

    /// Records a line appended at `offset`.
    mutating func noteAppended(seq: UInt64, timestamp: Int64, offset: Int, recordBytes: Int) {
        if isEmpty { firstTimestamp = timestamp }
        lastSeq = seq
        lastTimestamp = timestamp
        if (seq - firstSeq) % Self.indexStride == 0 { index.append((seq, offset)) }
        bytes = offset + recordBytes
    }

    /// The byte offset to start reading at to find `seq`.
    func offset(toFind seq: UInt64) -> Int {
        var low = 0
        var high = index.count - 1
        var best = 0
        while low <= high {
            let mid = (low + high) / 2
            if index[mid].seq <= seq {
                best = index[mid].offset
                low = mid + 1
            } else {
                high = mid - 1
            }
        }
        return best
    }
}

/// Encoding and decoding of segment records.
enum SegmentRecord {
    /// A record for `line` (already carrying its seq and timestamp).
    static func encode(_ lineBytes: [UInt8], into out: inout [UInt8]) {
        let length = UInt32(lineBytes.count)
        let crc = lineBytes.withUnsafeBytes { CRC32.checksum($0) }
        out.append(contentsOf: [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)])
        out.append(contentsOf: [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)])
        out.append(contentsOf: lineBytes)
    }

    /// Walks the complete, valid records of `data` from `start`; stops at the first incomplete or
    /// corrupt one. `body` gets (offset, line bytes) and returns false to stop. Returns the offset after
    /// the last valid record visited.
    @discardableResult
    static func walk(_ data: UnsafeRawBufferPointer, from start: Int, _ body: (Int, UnsafeRawBufferPointer) -> Bool) -> Int {
        var offset = start
        while offset + Segment.headerBytes <= data.count {
            let length = Int(data.loadUnaligned(fromByteOffset: offset, as: UInt32.self).bigEndian)
            let crc = data.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self).bigEndian
            guard offset + Segment.headerBytes + length <= data.count else { break }
            let payload = UnsafeRawBufferPointer(rebasing: data[(offset + Segment.headerBytes)..<(offset + Segment.headerBytes + length)])
            guard CRC32.checksum(payload) == crc else { break }
            if !body(offset, payload) { return offset }
            offset += Segment.headerBytes + length
        }
        return offset
    }
}

/// Thin wrappers over POSIX file calls with errors a person can act on.
enum FileIO {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func openForAppend(_ path: String) throws -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw Failure(description: "cannot open \(path) for writing: \(String(cString: strerror(errno)))") }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        var written = 0
        try bytes.withUnsafeBytes { buffer in
            while written < buffer.count {
                let n = write(fd, buffer.baseAddress! + written, buffer.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))")
                }
                written += n
            }
        }
    }

    static func sync(_ fd: Int32, path: String) throws {
        guard fdatasync(fd) == 0 else { throw Failure(description: "cannot fsync \(path): \(String(cString: strerror(errno)))") }
    }

    /// Replaces `path` by `bytes` atomically and durably: a new file beside it, synced, renamed over.
    static func replace(_ path: String, with bytes: [UInt8]) throws {
        let temporary = path + ".recovering"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        try writeAll(fd, bytes, path: temporary)
        try sync(fd, path: temporary)
        guard rename(temporary, path) == 0 else { throw Failure(description: "cannot replace \(path): \(String(cString: strerror(errno)))") }
        syncDirectory((path as NSString).deletingLastPathComponent)
    }

    /// Makes a directory entry (a new file or a removal) durable.
    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    /// Reads `length` bytes at `offset` (fewer at the end of the file); nil when the file is gone.
    static func read(_ path: String, offset: Int, length: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: length)
        var total = 0
        let ok = out.withUnsafeMutableBytes { buffer -> Bool in
            while total < length {
                let n = pread(fd, buffer.baseAddress! + total, length - total, off_t(offset + total))
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                if n == 0 { break }
                total += n
            }
            return true
        }
        guard ok else { return nil }
        out.removeLast(length - total)
        return out
    }

    static func fileSize(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }
}

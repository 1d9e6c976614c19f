import Foundation
import SlipwayProtos

#if canImport(Glibc)
import Glibc
#endif

/// What recovery makes of one segment file's bytes: every intact record, in order, and for each
/// sequence number whose record is corrupt (a flipped bit, a torn write followed by later ones) a
/// marker line in its place, so sequence numbers stay contiguous and readers see what was lost.
/// A torn tail (nothing valid after it) is cut.
struct SegmentRecovery {
    /// The records to keep, each a LogLine's wire bytes with its seq.
    var records: [(seq: UInt64, bytes: [UInt8])] = []
    /// Sequence numbers whose records were corrupt (markers stand in for them).
    var lost: [UInt64] = []
    /// Bytes of the file that were part of no intact record.
    var skippedBytes = 0
    /// The intact prefix: when nothing after it is kept, the file is only truncated there.
    var intactPrefix = 0
    /// Something between intact records was not one (the file must be rewritten).
    var corruptInside = false

    /// Records larger than this are taken for garbage when resynchronizing.
    static let maxRecordBytes = 4 * 1024 * 1024
    /// How far ahead of the expected seq a record found after a corrupt span may be.
    static let maxGap: UInt64 = 1_000_000

    /// `data`: the file; `firstSeq`: its name's; `stream`: the key markers carry.
    init(_ data: UnsafeRawBufferPointer, firstSeq: UInt64, stream: Slipway_Logs_V1_StreamKey?, fillUpTo nextSeq: UInt64? = nil) {
        var offset = 0
        var expected = firstSeq
        var lastLine: Slipway_Logs_V1_LogLine?
        var clean = true
        while offset + Segment.headerBytes <= data.count {
            if let (line, length) = Self.record(data, at: offset, seqIn: expected...expected) {
                records.append((line.seq, Array(UnsafeRawBufferPointer(rebasing: data[(offset + Segment.headerBytes)..<(offset + Segment.headerBytes + length)]))))
                lastLine = line
                expected += 1
                offset += Segment.headerBytes + length
                if clean { intactPrefix = offset }
                continue
            }
            // Corrupt here: the next offset where an intact record of a later seq starts.
            guard let (next, line) = Self.resynchronize(data, from: offset + 1, after: expected) else { break }
            clean = false
            corruptInside = true
            skippedBytes += next - offset
            for seq in expected..<line.seq {
                records.append((seq, Self.marker(seq: seq, after: lastLine, stream: stream).serializedBytes()))
                lost.append(seq)
            }
            expected = line.seq
            offset = next
        }
        skippedBytes += data.count - offset
        // A later segment starts further on: the seqs in between were lost with this file's tail.
        if let nextSeq, nextSeq > expected, nextSeq - expected <= Self.maxGap, !records.isEmpty {
            for seq in expected..<nextSeq {
                records.append((seq, Self.marker(seq: seq, after: lastLine, stream: stream).serializedBytes()))
                lost.append(seq)
            }
        }
    }

    /// Whether the file must be rewritten (a marker stands in somewhere), rather than cut.
    var needsRewrite: Bool { corruptInside || !lost.isEmpty }

    /// The record at `offset` when it is complete, its CRC matches, it decodes and its seq is in `seqs`.
    static func record(_ data: UnsafeRawBufferPointer, at offset: Int, seqIn seqs: ClosedRange<UInt64>) -> (Slipway_Logs_V1_LogLine, Int)? {
        guard offset + Segment.headerBytes <= data.count else { return nil }
        let length = Int(data.loadUnaligned(fromByteOffset: offset, as: UInt32.self).bigEndian)
        let crc = data.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self).bigEndian
        guard length <= maxRecordBytes, offset + Segment.headerBytes + length <= data.count else { return nil }
        let payload = UnsafeRawBufferPointer(rebasing: data[(offset + Segment.headerBytes)..<(offset + Segment.headerBytes + length)])
        guard CRC32.checksum(payload) == crc, let line = try? Slipway_Logs_V1_LogLine(serializedBuffer: payload), seqs.contains(line.seq) else { return nil }
        return (line, length)
    }

    /// The first offset from `start` where an intact record with a seq in `expected...expected+maxGap` begins.
    static func resynchronize(_ data: UnsafeRawBufferPointer, from start: Int, after expected: UInt64) -> (Int, Slipway_Logs_V1_LogLine)? {
        var offset = start
        let seqs = expected...(expected + maxGap)
        while offset + Segment.headerBytes <= data.count {
            if let (line, _) = record(data, at: offset, seqIn: seqs) { return (offset, line) }
            offset += 1
        }
        return nil
    }

    /// The line standing in for a lost one: WARN, from the system, at the previous line's time.
    static func marker(seq: UInt64, after previous: Slipway_Logs_V1_LogLine?, stream: Slipway_Logs_V1_StreamKey?) -> Slipway_Logs_V1_LogLine {
        var line = Slipway_Logs_V1_LogLine()
        if let key = previous?.stream ?? stream { line.stream = key }
        line.seq = seq
        line.timestampNanos = previous?.timestampNanos ?? 0
        line.emittedNanos = previous?.emittedNanos ?? 0
        line.level = .warn
        line.source = .system
        line.serviceId = previous?.serviceId ?? ""
        line.text = "[slipway-logs] line \(seq) was corrupt on disk and is lost"
        return line
    }
}

import Foundation
import Synchronization

/// Refused requests per client address: a token bucket each (`rate` per second, bursts of
/// `burst`), charged only by requests that failed authentication or verification, so a git host
/// or a console that gets its secrets right never waits. A source with an empty bucket is answered
/// 429 before its request is looked at. At most `maxSources` addresses are tracked; when full, the
/// ones whose buckets have refilled are forgotten first (then the longest idle).
///
/// Behind a reverse proxy every request comes from the proxy's address: one bucket for all.
final class SourceLimiter: Sendable {
    let rate: Double
    let burst: Double
    let maxSources: Int
    private let buckets = Mutex<[String: Bucket]>([:])

    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    init(rate: Double, burst: Double, maxSources: Int = 10_000) {
        self.rate = rate
        self.burst = burst
        self.maxSources = maxSources
    }

    /// Seconds to wait (rounded up) when `source` has no refusal left; nil when it may go on.
    func wait(_ source: String?, now: ContinuousClock.Instant = .now) -> Int? {
        guard let source else { return nil }
        return buckets.withLock { buckets -> Int? in
            guard var bucket = buckets[source] else { return nil }
            refill(&bucket, now)
            buckets[source] = bucket
            return bucket.tokens >= 1 ? nil : Int(((1 - bucket.tokens) / rate).rounded(.up))
        }
    }

    /// One refusal for `source`.
    func charge(_ source: String?, now: ContinuousClock.Instant = .now) {
        guard let source else { return }
        buckets.withLock { buckets in
            if buckets[source] == nil, buckets.count >= maxSources { evict(&buckets, now) }
            var bucket = buckets[source] ?? Bucket(tokens: burst, updated: now)
            refill(&bucket, now)
            bucket.tokens = max(0, bucket.tokens - 1)
            buckets[source] = bucket
        }
    }

    var trackedSources: Int { buckets.withLock { $0.count } }

    private func refill(_ bucket: inout Bucket, _ now: ContinuousClock.Instant) {
        let elapsed = now - bucket.updated
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        bucket.tokens = min(burst, bucket.tokens + max(0, seconds) * rate)
        bucket.updated = now
    }

    private func evict(_ buckets: inout [String: Bucket], _ now: ContinuousClock.Instant) {
        let full = buckets.filter { entry in
            var bucket = entry.value
            refill(&bucket, now)
            return bucket.tokens >= burst
        }
        if !full.isEmpty {
            for key in full.keys { buckets.removeValue(forKey: key) }
        } else if let oldest = buckets.min(by: { $0.value.updated < $1.value.updated }) {
            buckets.removeValue(forKey: oldest.key)
        }
    }
}

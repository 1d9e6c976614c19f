import Logging
import SlipwayACME
import Synchronization

/// What the challenge server serves (token → body), and a record of what was presented and cleaned up.
final class ChallengeStore: Sendable {
    private struct State {
        var bodies: [String: String] = [:]
        var presented: [String] = []
        var cleanedUp: [String] = []
    }

    private let state = Mutex(State())

    func body(for token: String) -> String? { state.withLock { $0.bodies[token] } }
    func serve(_ body: String, for token: String) { state.withLock { $0.bodies[token] = body } }
    func remove(_ token: String) { state.withLock { $0.bodies[token] = nil } }
    func recordPresented(_ token: String) { state.withLock { $0.presented.append(token) } }
    func recordCleanedUp(_ token: String) { state.withLock { $0.cleanedUp.append(token) } }

    var presented: [String] { state.withLock { $0.presented } }
    var cleanedUp: [String] { state.withLock { $0.cleanedUp } }
    var served: [String: String] { state.withLock { $0.bodies } }
}

/// Answers HTTP-01 through the test's challenge server: correctly, with wrong content, or not at all.
struct StoreResponder: ACMEChallengeResponder {
    enum Mode: Sendable {
        case correct
        case wrongContent
        case nothing
    }

    var store: ChallengeStore
    var mode: Mode = .correct

    func present(token: String, keyAuthorization: String) async throws {
        store.recordPresented(token)
        switch mode {
        case .correct: store.serve(keyAuthorization, for: token)
        case .wrongContent: store.serve("not-the-key-authorization", for: token)
        case .nothing: break
        }
    }

    func cleanUp(token: String) async throws {
        store.remove(token)
        store.recordCleanedUp(token)
    }
}

/// Keeps every log message, to check what the client says it did (a retry, say).
final class LogRecorder: Sendable {
    private let entries = Mutex<[String]>([])

    var messages: [String] { entries.withLock { $0 } }

    func append(_ message: String) { entries.withLock { $0.append(message) } }

    func logger(_ label: String = "acme-test") -> Logger {
        var logger = Logger(label: label) { _ in RecordingLogHandler(recorder: self) }
        logger.logLevel = .trace
        return logger
    }
}

private struct RecordingLogHandler: LogHandler {
    let recorder: LogRecorder
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        recorder.append(event.message.description)
    }
}

import Synchronization

/// Response headers and trailers of a client call, readable from any task.
final class ClientResponseState: Sendable {
    private let state = Mutex<(initial: Metadata, trailing: Metadata)>(([:], [:]))

    func setInitial(_ metadata: Metadata) { state.withLock { $0.initial = metadata } }
    func setTrailers(_ metadata: Metadata) { state.withLock { $0.trailing = metadata } }
    var initial: Metadata { state.withLock { $0.initial } }
    var trailing: Metadata { state.withLock { $0.trailing } }
}

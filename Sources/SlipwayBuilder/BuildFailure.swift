import SlipwayProtos

/// Why a build did not produce an image: the result's reason, the step, a message for a person.
struct BuildFailure: Error, Sendable, CustomStringConvertible {
    enum Kind: Sendable, Equatable {
        case failed(Slipway_Builder_V1_FailureReason)
        case canceled
        case timedOut
    }

    var kind: Kind
    var step: Slipway_Builder_V1_Step
    var message: String

    init(_ reason: Slipway_Builder_V1_FailureReason, step: Slipway_Builder_V1_Step, _ message: String) {
        self.kind = .failed(reason)
        self.step = step
        self.message = message
    }

    init(kind: Kind, step: Slipway_Builder_V1_Step, _ message: String) {
        self.kind = kind
        self.step = step
        self.message = message
    }

    static func canceled(_ step: Slipway_Builder_V1_Step) -> BuildFailure {
        BuildFailure(kind: .canceled, step: step, "canceled")
    }

    var reason: Slipway_Builder_V1_FailureReason? {
        if case .failed(let reason) = kind { return reason }
        return nil
    }

    var description: String { message }
}

extension Task where Success == Never, Failure == Never {
    /// Throws `failure` when the current task is cancelled.
    static func checkCancellation(or failure: @autoclosure () -> BuildFailure) throws(BuildFailure) {
        if Task.isCancelled { throw failure() }
    }
}

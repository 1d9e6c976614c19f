public struct TimeoutError: Error {
    public init() {}
}

/// Runs `body`, cancelling it and throwing ``TimeoutError`` when `timeout` passes first.
public func withTimeout<T: Sendable>(_ timeout: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    guard let timeout else { return try await body() }
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw TimeoutError()
        }
        return value
    }
}

import Foundation
import Logging

/// The Kubernetes driver: a workload's objects (``KubernetesManifests``) applied with server-side
/// apply, its rollout followed until the Deployment says it is done (or its progress deadline
/// passed, or ours did), its pods read as running status, their logs polled.
public struct KubernetesDriver: Sendable {
    public let client: KubernetesClient
    let logger: Logger
    /// How often a rollout is looked at.
    public var pollInterval: Duration = .seconds(1)

    public init(client: KubernetesClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Applies the namespace, ConfigMap, Secret, Deployment and Service in that order, then waits
    /// for the rollout. Throws the Deployment's own failure (ProgressDeadlineExceeded) or, after
    /// `timeout`, the last progress message.
    public func deploy(_ input: KubernetesManifests.Input, timeout: Duration) async throws -> String {
        for object in KubernetesManifests.all(input) {
            _ = try await client.apply(object)
        }
        return try await waitRollout(input, timeout: timeout)
    }

    public func waitRollout(_ input: KubernetesManifests.Input, timeout: Duration) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        let namespace = KubernetesManifests.namespace(for: input.workload.environmentID)
        var last = "no answer yet"
        while true {
            let deployment = try await client.get(apiVersion: "apps/v1", kind: "Deployment", namespace: namespace, name: input.workload.serviceName)
            switch KubernetesStatus.rollout(deployment) {
            case .complete(let message):
                return message
            case .failed(let message):
                throw KubernetesError(code: 0, reason: "ProgressDeadlineExceeded", message: message + (try await podReasons(input)))
            case .progressing(let message):
                last = message
            }
            guard ContinuousClock.now < deadline else {
                throw KubernetesError(code: 0, reason: "Timeout", message: "not rolled out in time: \(last)" + (try await podReasons(input)))
            }
            try await Task.sleep(for: pollInterval)
        }
    }

    /// Why pods are not running, appended to a failure ("; web-7d9f…: CrashLoopBackOff: …, last exited with status 1").
    private func podReasons(_ input: KubernetesManifests.Input) async throws -> String {
        let failing = try await pods(input).filter { $0.status == .error }
        return failing.map { "; \($0.name): \($0.reason)\($0.lastExit.map { ", last \($0)" } ?? "")" }.joined()
    }

    /// The workload's pods as the cluster service reports instances.
    public func pods(_ input: KubernetesManifests.Input) async throws -> [KubernetesStatus.Pod] {
        let selector = KubernetesManifests.selector(input).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return try await client.list(apiVersion: "v1", kind: "Pod", namespace: KubernetesManifests.namespace(for: input.workload.environmentID), labelSelector: selector)
            .map(KubernetesStatus.pod)
    }

    /// Stop: the Deployment applied again with no replica (its objects stay, a deploy brings it back).
    public func stop(_ input: KubernetesManifests.Input) async throws {
        var stopped = input
        stopped.replicas = 0
        _ = try await client.apply(KubernetesManifests.deployment(stopped))
    }

    /// Delete: the workload's objects (the environment's namespace stays for its other services).
    public func delete(_ input: KubernetesManifests.Input) async throws {
        let namespace = KubernetesManifests.namespace(for: input.workload.environmentID)
        for object in KubernetesManifests.all(input).reversed() {
            guard let kind = object["kind"] as? String, kind != "Namespace", let apiVersion = object["apiVersion"] as? String,
                  let name = (object["metadata"] as? [String: Any])?["name"] as? String,
                  name != KubernetesManifests.pullSecretName, name != KubernetesManifests.environmentObjectName else { continue }
            try await client.delete(apiVersion: apiVersion, kind: kind, namespace: namespace, name: name)
        }
    }
}

import Foundation

/// What the cluster service's API needs of a driver: the local one (``LocalCluster``, runc) or
/// the Kubernetes one (``KubernetesCluster``).
public protocol ClusterDriver: Sendable {
    func deploy(_ spec: DeploySpec) async throws -> [Instance]
    func stop(_ workload: Workload, grace: Duration) async throws -> [Instance]
    func delete(_ workload: Workload, grace: Duration) async throws -> [Instance]
    func instances(_ workload: Workload) async throws -> [(Instance, running: Bool)]
    /// Every workload as it is now.
    func statuses() async -> [WorkloadStatus]
    /// Changes of the workloads' running status from now on (``statuses()`` gives the snapshot).
    func watch() async -> (id: UUID, changes: AsyncStream<WorkloadStatus>)
    func unwatch(_ id: UUID) async
}

extension LocalCluster: ClusterDriver {}

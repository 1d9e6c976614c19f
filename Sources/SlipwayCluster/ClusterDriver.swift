import Foundation

/// What the cluster service's API needs of a driver: the local one (``LocalCluster``, runc) or
/// the Kubernetes one (``KubernetesCluster``).
public protocol ClusterDriver: Sendable {
    func deploy(_ spec: LocalCluster.DeploySpec) async throws -> [LocalCluster.Instance]
    func stop(_ workload: LocalCluster.Workload, grace: Duration) async throws -> [LocalCluster.Instance]
    func delete(_ workload: LocalCluster.Workload, grace: Duration) async throws -> [LocalCluster.Instance]
    func instances(_ workload: LocalCluster.Workload) async throws -> [(LocalCluster.Instance, running: Bool)]
    /// Every workload as it is now.
    func statuses() async -> [LocalCluster.WorkloadStatus]
    /// Changes of the workloads' running status from now on (``statuses()`` gives the snapshot).
    func watch() async -> (id: UUID, changes: AsyncStream<LocalCluster.WorkloadStatus>)
    func unwatch(_ id: UUID) async
}

extension LocalCluster: ClusterDriver {}

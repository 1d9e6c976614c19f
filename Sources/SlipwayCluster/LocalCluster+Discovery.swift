import Foundation

/// Service discovery for isolated instances: the services of one environment reach each other by
/// name. Each instance's `/etc/hosts` lists every serving instance of its environment under its
/// service's name (the internal host name, also in `SLIPWAY_INTERNAL_HOST`), and is rewritten
/// whenever a workload's record changes.
extension LocalCluster {
    /// The built-in variable holding the service's internal host name.
    public static let internalHostVariable = "SLIPWAY_INTERNAL_HOST"

    /// `/etc/hosts` for an instance of `environmentID` (`own`: the instance itself, by its id).
    func hostsFile(_ environmentID: String, own: Instance?) -> String {
        var lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if let own, let host = own.host { lines.append("\(host)\t\(own.id)") }
        lines.append("# Slipway: the services of this environment, by name")
        for record in records(in: environmentID) where record.stopped != true {
            for instance in record.current {
                if let host = instance.host { lines.append("\(host)\t\(record.workload.serviceName)") }
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Rewrites the `/etc/hosts` of every instance of the environment.
    func refreshHosts(_ environmentID: String) {
        let records = records(in: environmentID)
        for record in records {
            for instance in record.current + record.pending + (record.retiring ?? []) where instance.host != nil {
                do {
                    try runtime.writeHosts(instance.id, hostsFile(environmentID, own: instance))
                } catch {
                    // The instance's directory may be gone already (removed meanwhile).
                    logger.debug("cannot update /etc/hosts", metadata: ["instance": "\(instance.id)", "error": "\(error)"])
                }
            }
        }
    }

    func records(in environmentID: String) -> [Record] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/workloads")) ?? []
        return files.sorted().compactMap { file -> Record? in
            guard file.hasSuffix(".json"), let record = try? load(String(file.dropLast(5))), record.workload.environmentID == environmentID else { return nil }
            return record
        }
    }
}

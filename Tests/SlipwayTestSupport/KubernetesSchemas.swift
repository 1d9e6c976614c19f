import Foundation
import SlipwayProcess

/// Kubernetes objects checked against Kubernetes' published schemas by `kubernetes-validate --strict`
/// (PyPI; the schemas ship with it, no API server is needed). `make test` installs it.
public enum KubernetesSchemas {
    public static let version = "1.30.0"

    /// Writes each object's JSON (`encode`) to a file and runs the validator on them all; returns
    /// whether it accepted them and what it printed.
    public static func validate(_ objects: [[String: Any]], encode: ([String: Any]) throws -> Data) async throws -> (valid: Bool, output: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-k8s-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var files: [String] = []
        for (index, object) in objects.enumerated() {
            let file = "\(directory)/\(index).json"
            try encode(object).write(to: URL(fileURLWithPath: file))
            files.append(file)
        }
        let (termination, lines) = try await ChildProcess("/usr/bin/env", ["python3", "-m", "kubernetes_validate", "--strict", "-k", version] + files).output()
        return (termination.succeeded, lines.joined(separator: "\n"))
    }
}

import ArgumentParser
import Foundation
import SlipwayProtos

/// Where a command acts: organization, project and environment, by name or id.
struct TargetOptions: ParsableArguments, Sendable {
    @Option(help: "Organization, name or id (env SLIPWAY_ORG).") var org: String?
    @Option(help: "Project, name or id (env SLIPWAY_PROJECT).") var project: String?
    @Option(name: .customLong("env"), help: "Environment, name or id (env SLIPWAY_ENV).") var environment: String?

    private var variables: [String: String] { ProcessInfo.processInfo.environment }

    /// The item named or identified by `wanted` (flag, then environment variable), or the only one.
    static func pick<T>(_ items: [T], _ wanted: String?, kind: String, flag: String, in place: String, id: KeyPath<T, String>, name: KeyPath<T, String>) throws -> T {
        let names = items.map { $0[keyPath: name] }.joined(separator: ", ")
        guard let wanted else {
            if items.count == 1 { return items[0] }
            throw CLIError.usage("which \(kind)\(place)? pass --\(flag) (one of: \(names))")
        }
        guard let found = items.first(where: { $0[keyPath: id] == wanted || $0[keyPath: name] == wanted }) else {
            throw CLIError.notFound("no \(kind) \"\(wanted)\"\(place) (there are: \(names))")
        }
        return found
    }

    func organization(_ client: GatewayClient) async throws -> Slipway_Pipeline_V1_Organization {
        let organizations = try await client.call(Slipway_Api_V1_Slipway.ListOrganizations.self, .init()).organizations
        return try Self.pick(organizations, org ?? variables["SLIPWAY_ORG"], kind: "organization", flag: "org", in: "", id: \.id, name: \.name)
    }

    func project(_ client: GatewayClient) async throws -> Slipway_Pipeline_V1_Project {
        let organization = try await organization(client)
        var request = Slipway_Pipeline_V1_ListProjectsRequest()
        request.organizationId = organization.id
        let projects = try await client.call(Slipway_Api_V1_Slipway.ListProjects.self, request).projects
        return try Self.pick(projects, project ?? variables["SLIPWAY_PROJECT"], kind: "project", flag: "project", in: " in \(organization.name)", id: \.id, name: \.name)
    }

    func environment(_ client: GatewayClient) async throws -> Slipway_Pipeline_V1_Environment {
        let project = try await project(client)
        var request = Slipway_Pipeline_V1_ListEnvironmentsRequest()
        request.projectId = project.id
        let environments = try await client.call(Slipway_Api_V1_Slipway.ListEnvironments.self, request).environments
        return try Self.pick(environments, environment ?? variables["SLIPWAY_ENV"], kind: "environment", flag: "env", in: " in \(project.name)", id: \.id, name: \.name)
    }

    func services(_ client: GatewayClient, in environment: Slipway_Pipeline_V1_Environment) async throws -> [Slipway_Pipeline_V1_Service] {
        var request = Slipway_Pipeline_V1_ListServicesRequest()
        request.environmentId = environment.id
        return try await client.call(Slipway_Api_V1_Slipway.ListServices.self, request).services
    }

    /// Services by name or id in the environment.
    func services(_ client: GatewayClient, named names: [String]) async throws -> (Slipway_Pipeline_V1_Environment, [Slipway_Pipeline_V1_Service]) {
        let environment = try await environment(client)
        let all = try await services(client, in: environment)
        let chosen = try names.map { name in
            guard let found = all.first(where: { $0.id == name || $0.name == name }) else {
                throw CLIError.notFound("no service \"\(name)\" in environment \(environment.name) (there are: \(all.map(\.name).joined(separator: ", ")))")
            }
            return found
        }
        return (environment, chosen)
    }

    func service(_ client: GatewayClient, named name: String) async throws -> (Slipway_Pipeline_V1_Environment, Slipway_Pipeline_V1_Service) {
        let (environment, services) = try await services(client, named: [name])
        return (environment, services[0])
    }
}

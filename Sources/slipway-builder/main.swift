import ArgumentParser
import SlipwayBuilder
import SlipwayIsolation
import SlipwayServiceKit

/// `slipway-builder`: git fetch, image build, push, mirroring, build cache.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slipway-builder", abstract: "Slipway builder service: git fetch, image build, push, mirroring, build cache.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var builder: BuilderOptions

    /// buildah runs Dockerfile steps through this executable (RuntimeShim) before anything else.
    static func main() async {
        let arguments = CommandLine.arguments
        if arguments.count > 1, arguments[1] == RuntimeShim.argument { RuntimeShim.run(Array(arguments.dropFirst(2))) }
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    func run() async throws {
        try await ServiceRunner.run(.builder, options: options, component: BuilderComponent(configuration: try builder.configuration()))
    }
}

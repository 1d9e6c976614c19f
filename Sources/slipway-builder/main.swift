import ArgumentParser
import SlipwayBuilder
import SlipwayServiceKit

/// `slipway-builder`: git fetch, image build, push, mirroring, build cache.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slipway-builder", abstract: "Slipway builder service: git fetch, image build, push, mirroring, build cache.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var builder: BuilderOptions

    func run() async throws {
        try await ServiceRunner.run(.builder, options: options, component: BuilderComponent(configuration: try builder.configuration()))
    }
}

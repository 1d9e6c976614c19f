import ArgumentParser
import Foundation

/// `slipway`: starts the local platform and drives it through the gateway.
///
/// Exit codes: 0 success; 1 the action failed (a deployment ended in error or was canceled);
/// 2 bad usage or a request the platform refused as invalid; 3 not found; 4 not authenticated or
/// not allowed; 5 the gateway cannot be reached; 6 rate limited; 7 any other error.
public struct SlipwayCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "slipway",
        abstract: "Slipway: git push to a live HTTPS app, on machines you own.",
        subcommands: [
            UpCommand.self, DownCommand.self, PsCommand.self, SuperviseCommand.self, OrgCommand.self, ProjectCommand.self, EnvCommand.self, ServiceCommand.self,
            DeployCommand.self, RedeployCommand.self, RestartCommand.self, StopCommand.self, CancelCommand.self, RollbackCommand.self, WatchCommand.self,
            DeleteCommand.self, StatusCommand.self, HistoryCommand.self, LogsCommand.self, TokenCommand.self, WebhookCommand.self, QuotaCommand.self, PKICommand.self, RegistryLoginCommand.self,
        ])

    public init() {}

    /// Runs the command line; errors go to stderr with their exit code.
    public static func runMain() async {
        do {
            var command = try parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            Foundation.exit(error.exitCode)
        } catch let error as ExitCode {
            Foundation.exit(error.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }  // --help, --version
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            // Usage errors from the parser (EX_USAGE) are 2, as documented; anything else 7.
            Foundation.exit(code.rawValue == 64 ? 2 : 7)
        }
    }
}

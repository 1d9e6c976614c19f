import SlipwayCLI

await SlipwayCommand.runMain()

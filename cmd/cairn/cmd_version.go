package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"
)

func newVersionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 0, 0); err != nil {
				return err
			}
			out := newOutput(c)
			if out.json {
				return out.JSON(map[string]string{"version": version, "go_version": runtime.Version(),
					"go_os": runtime.GOOS, "go_arch": runtime.GOARCH})
			}
			_, err := fmt.Fprintf(out.stdout, "cairn %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}

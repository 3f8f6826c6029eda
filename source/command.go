package source

import (
	"context"
	"errors"
	"io"
)

// openCommand runs s.Backup, without a shell; its standard output is the
// component, stored under the component's name.
func openCommand(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	if s.Name == "" {
		return "", nil, errors.New("command component without a name")
	}
	t, err := commandTool(s.Backup, "backup")
	if err != nil {
		return "", nil, err
	}
	rc, err := t.stream(ctx)
	if err != nil {
		return "", nil, err
	}
	return s.Name, rc, nil
}

// restoreCommand runs s.Restore with r on its standard input.
func restoreCommand(ctx context.Context, s Spec, r io.Reader) error {
	t, err := commandTool(s.Restore, "restore")
	if err != nil {
		return err
	}
	return t.feed(ctx, r)
}

func commandTool(argv []string, what string) (*tool, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("no " + what + " command")
	}
	return &tool{name: argv[0], path: argv[0], args: argv[1:]}, nil
}

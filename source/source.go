package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Open starts taking the stream of component s and returns the name the
// stream gets as a file in the component's snapshot, and the stream itself.
// Nothing is staged: the bytes come from the producer as they are read, so
// memory stays bounded whatever the size.
//
// Close returns nil only when the whole stream was read and the producer
// succeeded. A producer that failed gives an error carrying the end of its
// error output, with any password of s removed. Closing before the end
// stops the producer and reports the stream as incomplete. Cancelling ctx
// stops the producer too.
func Open(ctx context.Context, s Spec) (fileName string, rc io.ReadCloser, err error) {
	switch s.Kind {
	case "command":
		return openCommand(ctx, s)
	case "postgres":
		return openPostgres(ctx, s)
	case "mysql":
		return openMySQL(ctx, s)
	case "etcd":
		return openEtcd(ctx, s)
	case "redis":
		return openRedis(ctx, s)
	case "":
		return "", nil, fmt.Errorf("component %q: no kind", s.Name)
	default:
		return "", nil, fmt.Errorf("component %q: kind %q is not a stream source", s.Name, s.Kind)
	}
}

// Target says where RestoreLive puts a stream back. Which fields matter
// depends on the kind; the others are ignored.
type Target struct {
	// DSN is the database to restore into, in the same form as the
	// component's DSN (postgres, mysql). A database that does not exist
	// is created. With Spec.All (pg_dumpall) it names the server to
	// connect to, and the database in it is only the one to connect to.
	DSN string
	// DataDir is etcd's data directory to create, or the directory of a
	// stopped Redis server (its "dir"), where dump.rdb is written.
	DataDir string
	// Address is the Redis server's host:port. If it is given and
	// something answers there, the restore is refused: a running server
	// would not read the file, and would overwrite it when it saves.
	Address string
	// Overwrite allows a target that is not new or empty: a PostgreSQL or
	// MySQL database is dropped and created again, an etcd data
	// directory or a dump.rdb replaced. Without it such a target is an
	// error and nothing is changed.
	Overwrite bool
	// Name, InitialCluster, InitialAdvertisePeerURLs and ClusterToken are
	// the restored etcd member's --name, --initial-cluster,
	// --initial-advertise-peer-urls and --initial-cluster-token; etcd must
	// then be started with the same name and peer URLs. Empty ones keep
	// etcdutl's defaults.
	Name                     string
	InitialCluster           string
	InitialAdvertisePeerURLs string
	ClusterToken             string
}

// RestoreLive puts stream r, as Open produced it for s, back into the live
// system t names:
//
//   - command: runs s.Restore with r on its standard input.
//   - postgres: psql (plain) or pg_restore (custom) into t.DSN's database,
//     which must be new or empty; a plain dump is checked afterwards by
//     counting the rows of each table it filled. With s.All, psql replays
//     the whole-server dump into the server of t.DSN, which must hold no
//     databases of its own yet.
//   - mysql: the mariadb (or mysql) client into t.DSN's database, which
//     must be new or empty.
//   - etcd: etcdutl snapshot restore into t.DataDir, which must not exist
//     or be empty; etcd can then be started on it.
//   - redis: writes t.DataDir/dump.rdb for a stopped server, which must
//     then start with appendonly off: with the append-only file on, Redis
//     ignores dump.rdb and starts empty.
func RestoreLive(ctx context.Context, s Spec, t Target, r io.Reader) error {
	var err error
	switch s.Kind {
	case "command":
		err = restoreCommand(ctx, s, r)
	case "postgres":
		err = restorePostgres(ctx, s, t, r)
	case "mysql":
		err = restoreMySQL(ctx, s, t, r)
	case "etcd":
		err = restoreEtcd(ctx, t, r)
	case "redis":
		err = restoreRedis(ctx, t, r)
	case "":
		err = errors.New("no kind")
	default:
		err = fmt.Errorf("kind %q cannot be restored from a stream", s.Kind)
	}
	if err != nil {
		return fmt.Errorf("restore component %q: %w", s.Name, err)
	}
	return nil
}

// dirEmpty reports whether dir is missing or empty.
func dirEmpty(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", dir, err)
	}
	return len(names) == 0, nil
}

// writeTemp copies r into a new file in dir and returns its name. The
// caller removes or renames it.
func writeTemp(dir, pattern string, r io.Reader) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write %s: %w", filepath.Base(f.Name()), err)
	}
	return f.Name(), nil
}

// Package source takes cluster components that are not file trees as one
// stream each (a database dump, an etcd snapshot, an RDB, a command's output)
// and puts such a stream back into a live system.
package source

// Spec is one component's source settings, from the cluster file.
type Spec struct {
	Kind string // command, postgres, mysql, etcd, redis, s3
	Name string // component name
	// command
	Backup, Restore []string
	// postgres, mysql
	DSN    string
	All    bool   // postgres: pg_dumpall
	Format string // postgres: plain (default) or custom
	// etcd
	Endpoints                 []string
	CertFile, KeyFile, CAFile string
	// redis
	Address, Password string
	// s3
	Endpoint, Bucket, Prefix, AccessKey, SecretKey string
}

// Package cluster reads cluster files (cluster.yaml) and runs cluster
// backups: hooks around the run and around each component, one snapshot per
// component, and the run records that say which parts completed.
//
// A component names the node its data lives on. A component without a node
// is run by whichever process selects it, on whatever host that process
// runs: when the same file is run on several nodes, give such components a
// node or select them with --component on one node only, or each node backs
// them up.
package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/snapshot"
	"github.com/cairn-backup/cairn/source"
	"gopkg.in/yaml.v3"
)

// Defaults of the cluster file (cluster.md).
const (
	DefaultRunTimeout  = 6 * time.Hour
	DefaultHookTimeout = 5 * time.Minute
)

// Config is a cluster file.
type Config struct {
	Cluster      string      `yaml:"cluster"`
	Repository   string      `yaml:"repository"`
	PasswordFile string      `yaml:"password_file"`
	PasswordEnv  string      `yaml:"password_env"`
	Hooks        Hooks       `yaml:"hooks"`
	Components   []Component `yaml:"components"`
	Retention    Retention   `yaml:"retention"`
	RunTimeout   Duration    `yaml:"run_timeout"` // zero: DefaultRunTimeout

	Path string `yaml:"-"` // the file it was read from, for messages
}

// Hooks are commands run before and after the whole run or one component.
// Each is an argv list, run without a shell.
type Hooks struct {
	Pre     [][]string `yaml:"pre"`
	Post    [][]string `yaml:"post"`
	Timeout Duration   `yaml:"timeout"` // of each hook; zero: DefaultHookTimeout
}

// Component is one part of the cluster. Which keys apply depends on Kind
// (kindKeys).
type Component struct {
	Name    string  `yaml:"name"`
	Kind    string  `yaml:"kind"`
	Node    string  `yaml:"node"` // empty: run by any process that selects it
	Hooks   Hooks   `yaml:"hooks"`
	Restore Restore `yaml:"restore"`

	// files
	Paths         []string `yaml:"paths"`
	Exclude       []string `yaml:"exclude"`
	OneFileSystem bool     `yaml:"one_file_system"`
	// etcd
	Endpoints []string `yaml:"endpoints"`
	CertFile  string   `yaml:"cert_file"`
	KeyFile   string   `yaml:"key_file"`
	CAFile    string   `yaml:"ca_file"`
	// postgres, mysql
	DSN    string `yaml:"dsn"`
	All    bool   `yaml:"all"`
	Format string `yaml:"format"`
	// s3
	Endpoint     string `yaml:"endpoint"`
	Bucket       string `yaml:"bucket"`
	Prefix       string `yaml:"prefix"`
	AccessKeyEnv string `yaml:"access_key_env"`
	SecretKeyEnv string `yaml:"secret_key_env"`
	// redis
	Address      string `yaml:"address"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// command (its restore argv is Restore.Command)
	Backup []string `yaml:"backup"`

	Line int            `yaml:"-"` // where the component starts in the file
	keys map[string]int // the keys given, with their lines (see locate)
}

// Restore is what restore to live does with a component: for a command, the
// argv fed the dump on stdin; for other kinds, the live target's defaults.
type Restore struct {
	Command []string `yaml:"-"`

	DataDir string `yaml:"data_dir"` // etcd, redis
	DSN     string `yaml:"dsn"`      // postgres, mysql
	// s3
	Endpoint string `yaml:"endpoint"`
	Bucket   string `yaml:"bucket"`
	Prefix   string `yaml:"prefix"`
	// redis
	Address string `yaml:"address"`
	// etcd: the restored member
	Name                     string `yaml:"name"`
	InitialCluster           string `yaml:"initial_cluster"`
	InitialClusterToken      string `yaml:"initial_cluster_token"`
	InitialAdvertisePeerURLs string `yaml:"initial_advertise_peer_urls"`

	line int
	keys map[string]int // mapping keys given; nil for a list
}

// restoreFields decodes the mapping form; the name shows in the decoder's
// messages, which typeName rewrites.
type restoreFields Restore

// UnmarshalYAML takes a list (a command's restore argv) or a mapping. It
// uses the older interface, whose unmarshal keeps the decoder's strictness
// about unknown keys.
func (r *Restore) UnmarshalYAML(unmarshal func(any) error) error {
	var list []any
	if unmarshal(&list) == nil {
		return unmarshal(&r.Command)
	}
	return unmarshal((*restoreFields)(r))
}

// Retention is the policy `cairn forget --config` applies to the cluster's
// snapshots. Counts are 0 for an unused rule and -1 for no limit.
type Retention struct {
	KeepLast    int      `yaml:"keep_last"`
	KeepHourly  int      `yaml:"keep_hourly"`
	KeepDaily   int      `yaml:"keep_daily"`
	KeepWeekly  int      `yaml:"keep_weekly"`
	KeepMonthly int      `yaml:"keep_monthly"`
	KeepYearly  int      `yaml:"keep_yearly"`
	KeepWithin  string   `yaml:"keep_within"` // "2y5m7d3h"
	KeepTag     []string `yaml:"keep_tag"`    // each "a,b" keeps snapshots with both tags
}

// Policy returns the retention as a forget policy.
func (r Retention) Policy() (snapshot.Policy, error) {
	p := snapshot.Policy{
		Last: r.KeepLast, Hourly: r.KeepHourly, Daily: r.KeepDaily,
		Weekly: r.KeepWeekly, Monthly: r.KeepMonthly, Yearly: r.KeepYearly,
	}
	if r.KeepWithin != "" {
		d, err := snapshot.ParseDuration(r.KeepWithin)
		if err != nil {
			return p, fmt.Errorf("keep_within: %w", err)
		}
		p.Within = d
	}
	for _, t := range r.KeepTag {
		if tags := snapshot.ParseTagList(t); len(tags) > 0 {
			p.Tags = append(p.Tags, tags)
		}
	}
	return p, nil
}

// Duration is a time.Duration written as "90s", "5m" or "6h".
type Duration time.Duration

// UnmarshalYAML parses a Go duration, naming the line when it is not one.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || v < 0 {
		return &yaml.TypeError{Errors: []string{
			fmt.Sprintf("line %d: want a duration such as 90s, 5m or 6h", n.Line)}}
	}
	*d = Duration(v)
	return nil
}

// Or returns d, or def when d is zero.
func (d Duration) Or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

func mappingKeys(n *yaml.Node) map[string]int {
	keys := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i].Value; k != "<<" { // a merge is not a key of its own
			keys[k] = n.Content[i].Line
		}
	}
	return keys
}

// mappingValue returns the value of key in mapping n, or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// locate records where each component is and which keys it sets, which
// validation needs and decoding into structs loses. root is the document
// that decoded into c.
func (c *Config) locate(root *yaml.Node) {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	list := mappingValue(doc, "components")
	if list == nil || list.Kind != yaml.SequenceNode {
		return
	}
	for i := range c.Components {
		if i >= len(list.Content) {
			break
		}
		n := list.Content[i]
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		comp := &c.Components[i]
		comp.Line, comp.keys = n.Line, map[string]int{}
		if n.Kind != yaml.MappingNode {
			continue
		}
		comp.keys = mappingKeys(n)
		if rn := mappingValue(n, "restore"); rn != nil {
			comp.Restore.line = comp.keys["restore"]
			if rn.Kind == yaml.MappingNode {
				comp.Restore.keys = mappingKeys(rn)
			}
		}
	}
}

// Load reads and validates the cluster file at name.
func Load(name string) (*Config, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read cluster file: %w", err)
	}
	return Parse(data, name)
}

// Parse decodes and validates a cluster file; name is used in messages.
// Every problem found is reported, each as one line naming where it is.
func Parse(data []byte, name string) (*Config, error) {
	where := filepath.Base(name)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	err := dec.Decode(&c)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: the file is empty", where)
	}
	if err != nil {
		return nil, decodeError(where, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: line %d: a second YAML document; a cluster file holds one", where, more.Line)
	}
	// The same document again, as nodes, for what validation needs to know
	// of the text: the keys given and their lines.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, decodeError(where, err)
	}
	c.locate(&root)
	c.Path = name
	if errs := c.validate(); len(errs) > 0 {
		for i, e := range errs {
			errs[i] = fmt.Errorf("%s: %w", where, e)
		}
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

var (
	unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)
	wrongType    = regexp.MustCompile(`^line (\d+): cannot unmarshal (!!\w+)(?: .*)? into (\S+)$`)
)

// decodeError rewrites the decoder's messages in the file's terms: key
// names and YAML shapes rather than Go types. Values are not repeated, as
// a DSN may hold a password.
func decodeError(where string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %s", where, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var errs []error
	for _, msg := range te.Errors {
		if m := unknownField.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("line %s: unknown key %q%s", m[1], m[2], typeName(m[3], true))
		} else if m := wrongType.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("line %s: want %s, got %s", m[1], typeName(m[3], false), tagName(m[2]))
		}
		errs = append(errs, fmt.Errorf("%s: %s", where, msg))
	}
	return errors.Join(errs...)
}

// typeName describes a Go type of this package as the file shows it: where
// a key is (in) or what a value must be.
func typeName(t string, in bool) string {
	if in {
		switch t {
		case "cluster.Config":
			return " at the top level"
		case "cluster.Component":
			return " in a component"
		case "cluster.restoreFields":
			return " in restore"
		case "cluster.Hooks":
			return " in hooks"
		case "cluster.Retention":
			return " in retention"
		}
		return ""
	}
	switch t {
	case "string":
		return "a string"
	case "int":
		return "a whole number"
	case "bool":
		return "true or false"
	case "[]string":
		return "a list of strings"
	case "[][]string":
		return "a list of commands, each a list of strings"
	case "[]cluster.Component":
		return "a list of components"
	case "cluster.Hooks":
		return "a mapping with pre, post and timeout"
	case "cluster.Retention":
		return "a mapping of keep_* rules"
	case "cluster.Config", "cluster.Component", "cluster.restoreFields":
		return "a mapping"
	}
	return t
}

func tagName(tag string) string {
	switch tag {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "true or false"
	case "!!seq":
		return "a list"
	case "!!map":
		return "a mapping"
	case "!!null":
		return "nothing"
	}
	return tag
}

// Kinds of component, and the keys each takes besides the common ones.
var kindKeys = map[string][]string{
	"files":    {"paths", "exclude", "one_file_system"},
	"etcd":     {"endpoints", "cert_file", "key_file", "ca_file"},
	"postgres": {"dsn", "all", "format"},
	"mysql":    {"dsn"},
	"s3":       {"endpoint", "bucket", "prefix", "access_key_env", "secret_key_env"},
	"redis":    {"address", "password_file", "password_env"},
	"command":  {"backup"},
}

var commonKeys = []string{"name", "kind", "node", "hooks", "restore"}

// restoreKeys are the restore settings each kind takes (command: an argv
// list instead; files go back to their own paths).
var restoreKeys = map[string][]string{
	"files":    {},
	"etcd":     {"data_dir", "name", "initial_cluster", "initial_cluster_token", "initial_advertise_peer_urls"},
	"postgres": {"dsn"},
	"mysql":    {"dsn"},
	"s3":       {"endpoint", "bucket", "prefix"},
	"redis":    {"data_dir", "address"},
}

// Kinds returns the component kinds, sorted.
func Kinds() []string {
	var ks []string
	for k := range kindKeys {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// validName is what names of clusters, components and nodes may be: they
// become directory names on restore and parts of file names.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (c *Config) validate() []error {
	var errs []error
	add := func(line int, format string, args ...any) {
		if line > 0 {
			format = "line %d: " + format
			args = append([]any{line}, args...)
		}
		errs = append(errs, fmt.Errorf(format, args...))
	}
	switch {
	case c.Cluster == "":
		add(0, "no cluster name: set cluster")
	case !validName.MatchString(c.Cluster):
		add(0, "cluster name %q: use letters, digits, '.', '_' and '-'", c.Cluster)
	}
	if c.PasswordFile != "" && c.PasswordEnv != "" {
		add(0, "password_file and password_env are mutually exclusive")
	}
	errs = append(errs, validateHooks("hooks", c.Hooks)...)
	if len(c.Components) == 0 {
		add(0, "no components")
	}
	type defined struct {
		name, node string
		line       int
	}
	var seen []defined
	for i := range c.Components {
		comp := &c.Components[i]
		errs = append(errs, comp.validate()...)
		if comp.Name == "" {
			continue
		}
		// A component without a node runs on any node, so its name must not
		// meet a component of any node.
		for _, d := range seen {
			if d.name == comp.Name && (d.node == comp.Node || d.node == "" || comp.Node == "") {
				why := "on the same node"
				if d.node == "" || comp.Node == "" {
					why = "a component without a node runs on every node"
				}
				add(comp.Line, "component %s is already defined at line %d (%s)", comp.Name, d.line, why)
				break
			}
		}
		seen = append(seen, defined{comp.Name, comp.Node, comp.Line})
	}
	r := c.Retention
	for _, n := range []struct {
		key string
		v   int
	}{{"keep_last", r.KeepLast}, {"keep_hourly", r.KeepHourly}, {"keep_daily", r.KeepDaily},
		{"keep_weekly", r.KeepWeekly}, {"keep_monthly", r.KeepMonthly}, {"keep_yearly", r.KeepYearly}} {
		if n.v < -1 {
			add(0, "retention: %s must be -1 (no limit) or more", n.key)
		}
	}
	if _, err := r.Policy(); err != nil {
		add(0, "retention: %v", err)
	}
	return errs
}

func validateHooks(where string, h Hooks) []error {
	var errs []error
	for _, list := range []struct {
		phase string
		argvs [][]string
	}{{"pre", h.Pre}, {"post", h.Post}} {
		for i, argv := range list.argvs {
			if len(argv) == 0 || argv[0] == "" {
				errs = append(errs, fmt.Errorf("%s: %s hook %d: empty command", where, list.phase, i+1))
			}
		}
	}
	return errs
}

// validate checks one component; the caller adds where it is.
func (comp *Component) validate() []error {
	var errs []error
	// at says where: a key's line, or 0 for the component's.
	at := func(line int, format string, args ...any) {
		if line == 0 {
			line = comp.Line
		}
		name := comp.Name
		if name == "" {
			name = "(unnamed)"
		}
		errs = append(errs, fmt.Errorf("line %d: component %s: "+format, append([]any{line, name}, args...)...))
	}
	add := func(format string, args ...any) { at(0, format, args...) }
	switch {
	case comp.Name == "":
		add("no name")
	case !validName.MatchString(comp.Name):
		add("name: use letters, digits, '.', '_' and '-'")
	}
	if comp.Node != "" && !validName.MatchString(comp.Node) {
		add("node %q: use letters, digits, '.', '_' and '-'", comp.Node)
	}
	own, known := kindKeys[comp.Kind]
	switch {
	case comp.Kind == "":
		add("no kind: want one of %s", strings.Join(Kinds(), ", "))
		return errs
	case !known:
		add("unknown kind %q: want one of %s", comp.Kind, strings.Join(Kinds(), ", "))
		return errs
	}
	// Keys of other kinds: most likely a wrong kind, or a key in the wrong
	// component.
	var stray []string
	for k := range comp.keys {
		if !slices.Contains(commonKeys, k) && !slices.Contains(own, k) {
			stray = append(stray, k)
		}
	}
	slices.Sort(stray)
	for _, k := range stray {
		at(comp.keys[k], "key %s does not apply to kind %s", k, comp.Kind)
	}
	for _, e := range validateHooks("hooks", comp.Hooks) {
		add("%v", e)
	}
	comp.validateRestore(at)
	has := func(k string) bool { _, ok := comp.keys[k]; return ok }
	switch comp.Kind {
	case "files":
		if len(comp.Paths) == 0 {
			add("kind files needs paths")
		}
		for _, p := range comp.Paths {
			if !filepath.IsAbs(p) {
				add("path %q is not absolute", p)
			}
		}
		if _, err := snapshot.ParsePatterns(comp.Exclude, false); err != nil {
			add("exclude: %v", err)
		}
	case "etcd":
		if len(comp.Endpoints) == 0 {
			add("kind etcd needs endpoints")
		}
		for _, ep := range comp.Endpoints {
			if err := source.CheckEtcdEndpoint(ep); err != nil {
				add("%v", err)
			}
		}
		if (comp.CertFile == "") != (comp.KeyFile == "") {
			add("cert_file and key_file go together")
		}
	case "postgres":
		if comp.DSN == "" {
			add("kind postgres needs dsn")
		}
		if comp.Format != "" && comp.Format != "plain" && comp.Format != "custom" {
			add("format %q: want plain or custom", comp.Format)
		}
	case "mysql":
		if comp.DSN == "" {
			add("kind mysql needs dsn")
		}
	case "s3":
		if comp.Bucket == "" {
			add("kind s3 needs bucket")
		}
		if has("access_key_env") != has("secret_key_env") {
			add("access_key_env and secret_key_env go together")
		}
	case "redis":
		if comp.Address == "" {
			add("kind redis needs address")
		}
		if comp.PasswordFile != "" && comp.PasswordEnv != "" {
			add("password_file and password_env are mutually exclusive")
		}
	case "command":
		if len(comp.Backup) == 0 || comp.Backup[0] == "" {
			add("kind command needs backup, the command whose output is saved")
		}
	}
	return errs
}

func (comp *Component) validateRestore(at func(int, string, ...any)) {
	r := comp.Restore
	if r.line == 0 {
		return // not given
	}
	if comp.Kind == "command" {
		if r.keys != nil {
			at(r.line, "restore of a command is its argv list, such as [\"grid-import\"]")
		} else if len(r.Command) == 0 || r.Command[0] == "" {
			at(r.line, "restore: empty command")
		}
		return
	}
	if r.keys == nil {
		at(r.line, "restore must be a mapping for kind %s", comp.Kind)
		return
	}
	want := restoreKeys[comp.Kind]
	var stray []string
	for k := range r.keys {
		if !slices.Contains(want, k) {
			stray = append(stray, k)
		}
	}
	slices.Sort(stray)
	for _, k := range stray {
		if len(want) == 0 {
			at(r.keys[k], "restore: kind %s takes no restore settings (its files go back to their own paths)", comp.Kind)
			continue
		}
		at(r.keys[k], "restore: key %s does not apply to kind %s (want %s)", k, comp.Kind, strings.Join(want, ", "))
	}
}

// RunTimeoutOr returns the run timeout with its default.
func (c *Config) RunTimeoutOr() time.Duration { return c.RunTimeout.Or(DefaultRunTimeout) }

// Password returns the repository password named by password_file or
// password_env, read now; ok is false when the file names neither.
func (c *Config) Password() (pw []byte, ok bool, err error) {
	if c.PasswordFile == "" && c.PasswordEnv == "" {
		return nil, false, nil
	}
	s, err := secret("password", c.PasswordFile, c.PasswordEnv)
	if err != nil {
		return nil, true, err
	}
	return []byte(s), true, nil
}

// secret reads a secret from a file (one trailing line end dropped) or an
// environment variable. Errors name where it was looked for, never the value.
func secret(what, file, env string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s file: %w", what, err)
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if s == "" {
			return "", fmt.Errorf("%s file %s is empty", what, file)
		}
		return s, nil
	}
	s := os.Getenv(env)
	if s == "" {
		return "", fmt.Errorf("%s: environment variable %s is not set", what, env)
	}
	return s, nil
}

// Select returns the components a process on node runs: those of node or
// of no node, matching any of globs (all of them when globs is empty), in
// file order.
func (c *Config) Select(node string, globs []string) ([]*Component, error) {
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("invalid --component pattern %q: %w", g, err)
		}
	}
	var out []*Component
	for i := range c.Components {
		comp := &c.Components[i]
		if comp.Node != "" && comp.Node != node {
			continue
		}
		if len(globs) > 0 && !slices.ContainsFunc(globs, func(g string) bool {
			ok, _ := path.Match(g, comp.Name)
			return ok
		}) {
			continue
		}
		out = append(out, comp)
	}
	if len(out) == 0 {
		what := "no component"
		if len(globs) > 0 {
			what = fmt.Sprintf("no component matching %s", strings.Join(globs, ", "))
		}
		return nil, fmt.Errorf("%s of cluster %s is to run on node %s (components with another node are left to that node)", what, c.Cluster, node)
	}
	return out, nil
}

// Spec returns what package source needs to read a component that is not a
// file tree, with its secrets read now.
func (comp *Component) Spec() (source.Spec, error) {
	s := source.Spec{
		Kind: comp.Kind, Name: comp.Name,
		Backup: comp.Backup, Restore: comp.Restore.Command,
		DSN: comp.DSN, All: comp.All, Format: comp.Format,
		Endpoints: comp.Endpoints, CertFile: comp.CertFile, KeyFile: comp.KeyFile, CAFile: comp.CAFile,
		Address:  comp.Address,
		Endpoint: comp.Endpoint, Bucket: comp.Bucket, Prefix: comp.Prefix,
	}
	if s.Kind == "postgres" && s.Format == "" {
		s.Format = "plain"
	}
	var err error
	switch comp.Kind {
	case "redis":
		if comp.PasswordFile != "" || comp.PasswordEnv != "" {
			if s.Password, err = secret("component "+comp.Name+": password", comp.PasswordFile, comp.PasswordEnv); err != nil {
				return s, err
			}
		}
	case "s3":
		akEnv, skEnv := comp.AccessKeyEnv, comp.SecretKeyEnv
		if akEnv == "" {
			// The usual variables, when set; otherwise the source goes without.
			akEnv, skEnv = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"
			if os.Getenv(akEnv) == "" {
				return s, nil
			}
		}
		if s.AccessKey, err = secret("component "+comp.Name+": access key", "", akEnv); err != nil {
			return s, err
		}
		if s.SecretKey, err = secret("component "+comp.Name+": secret key", "", skEnv); err != nil {
			return s, err
		}
	}
	return s, nil
}

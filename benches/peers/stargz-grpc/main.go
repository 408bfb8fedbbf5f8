// SPDX-License-Identifier: MIT OR Apache-2.0

// Command containerd-stargz-grpc is the benchmark's own small front for
// stargz-snapshotter's library (Debian's golang-github-containerd-
// stargz-snapshotter-dev ships the library but not the daemon): it makes
// the stargz snapshotter from the library's fs and snapshot packages and
// serves it on a unix socket over containerd's snapshots gRPC API, for a
// containerd that loads it as the proxy plugin
//
//	[proxy_plugins.stargz]
//	  type = "snapshot"
//	  address = "SOCKET"
//
// Registries on localhost (127.0.0.1:PORT) are reached over plain HTTP;
// other plain-HTTP hosts can be named with --insecure HOST (repeatable).
// There are no credentials: the registries it serves are anonymous.
//
// It does not use the library's service package, which would do the same
// assembly: that package (through service/resolver's CRI support) imports
// k8s.io/cri-api, which Debian does not package.
//
// Build (GOPATH mode, Debian's Go and -dev packages only):
//
//	GO111MODULE=off GOPATH=DIR:/usr/share/gocode go build -o BIN .
//
// where DIR/src/ocifs-peers/stargz-grpc is this directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/snapshot"
	rhttp "github.com/hashicorp/go-retryablehttp"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// hostList collects the repeated --insecure flag.
type hostList []string

func (h *hostList) String() string { return strings.Join(*h, ",") }

func (h *hostList) Set(v string) error {
	*h = append(*h, v)
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: %v\n", err)
		os.Exit(1)
	}
}

// registryHosts answers, for an image reference, the one host to fetch
// its blobs from: the reference's own, over plain HTTP when it is
// localhost or named insecure, anonymous, with a per-request timeout. The
// client's transport must be set (the fetcher wraps it) and be
// go-retryablehttp's, so that the library applies its retry settings.
func registryHosts(insecure map[string]bool, timeout time.Duration) source.RegistryHosts {
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		host := ref.Hostname()
		retrying := rhttp.NewClient()
		retrying.Logger = nil // not a line per request
		client := retrying.StandardClient()
		client.Timeout = timeout
		scheme := "https"
		if local, _ := docker.MatchLocalhost(host); local || insecure[host] {
			scheme = "http"
		}
		if host == "docker.io" {
			host = "registry-1.docker.io"
		}
		return []docker.RegistryHost{{
			Client:       client,
			Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
			Host:         host,
			Scheme:       scheme,
			Path:         "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}}, nil
	}
}

// newSnapshotter makes the stargz filesystem under ROOT/stargz and the
// overlay-based snapshotter over it under ROOT/snapshotter.
func newSnapshotter(ctx context.Context, root string, cfg fsconfig.Config, hosts source.RegistryHosts) (snapshots.Snapshotter, error) {
	snRoot := filepath.Join(root, "snapshotter")
	if err := os.MkdirAll(snRoot, 0o700); err != nil {
		return nil, err
	}
	// Overlayfs honours trusted.overlay.opaque as root, user.overlay.opaque
	// where it needs the userxattr option (a user namespace).
	opaque := layer.OverlayOpaqueTrusted
	if user, err := overlayutils.NeedsUserXAttr(snRoot); err != nil {
		log.G(ctx).WithError(err).Warn("cannot tell whether overlayfs needs userxattr; assuming not")
	} else if user {
		opaque = layer.OverlayOpaqueUser
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(root, "stargz"), cfg,
		stargzfs.WithGetSources(source.FromDefaultLabels(hosts)),
		stargzfs.WithOverlayOpaqueType(opaque))
	if err != nil {
		return nil, fmt.Errorf("the stargz filesystem: %w", err)
	}
	return snapshot.NewSnapshotter(ctx, snRoot, fs, snapshot.AsynchronousRemove)
}

func run() error {
	address := flag.String("address", "", "unix socket to serve the snapshots API on (required)")
	root := flag.String("root", "", "directory for the snapshotter's state and cache (required)")
	configPath := flag.String("config", "", "optional TOML file of the stargz filesystem's settings (fs/config.Config)")
	level := flag.String("log-level", "info", "logrus level: debug, info, warn, error")
	timeout := flag.Duration("request-timeout", 30*time.Second, "timeout of each request to a registry")
	var insecure hostList
	flag.Var(&insecure, "insecure", "registry HOST[:PORT] to reach over plain HTTP (repeatable)")
	flag.Parse()
	if *address == "" || *root == "" {
		flag.Usage()
		return fmt.Errorf("--address and --root are required")
	}

	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logrus.SetLevel(lvl)
	logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})

	var cfg fsconfig.Config
	if *configPath != "" {
		if _, err := toml.DecodeFile(*configPath, &cfg); err != nil {
			return fmt.Errorf("reading %s: %w", *configPath, err)
		}
	}
	plain := map[string]bool{}
	for _, h := range insecure {
		plain[h] = true
	}

	ctx, cancel := context.WithCancel(log.WithLogger(context.Background(), logrus.NewEntry(logrus.StandardLogger())))
	defer cancel()

	sn, err := newSnapshotter(ctx, *root, cfg, registryHosts(plain, *timeout))
	if err != nil {
		return fmt.Errorf("making the stargz snapshotter: %w", err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing the snapshotter")
		}
	}()

	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		return err
	}
	if err := os.Remove(*address); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing a stale %s: %w", *address, err)
	}
	lis, err := net.Listen("unix", *address)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *address, err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.G(ctx).WithField("address", *address).WithField("root", *root).Info("serving the stargz snapshotter")

	select {
	case s := <-sigs:
		log.G(ctx).WithField("signal", s).Info("stopping")
		srv.GracefulStop()
		return nil
	case err := <-served:
		return err
	}
}

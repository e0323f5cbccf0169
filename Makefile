# Sendense capture — build, test, demo and benchmarks.
#
#   make          build everything into build/
#   make deps     install the Debian packages the build and the tests need
#   make test     deps + build + unit and integration tests
#   make demo     the whole backup story against the built-in vCenter simulator
#   make bench    side-by-side benchmarks (bench/*.sh), figures printed as ratios
#   make install  CLI, plugin pair, man pages, completions, systemd unit
#                 (PREFIX=/usr/local, DESTDIR for staging)
#   make deb      build/sendense_VERSION_ARCH.deb (dpkg-deb)

SHELL       := /bin/bash
GO          ?= go
CC          ?= gcc
CFLAGS      ?= -O2 -g
VERSION     := $(shell cat VERSION)
COMMIT      := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
BUILD       := build
GOFLAGS_LD  := -ldflags "-X github.com/sendense/capture/internal/version.Version=$(VERSION) \
                         -X github.com/sendense/capture/internal/version.Commit=$(COMMIT)"
PLUGINDIR   ?= $(shell nbdkit --dump-config 2>/dev/null | sed -n 's/^plugindir=//p')

# make install: where things go (DESTDIR stages them elsewhere).
PREFIX         ?= /usr/local
BINDIR         ?= $(PREFIX)/bin
MANDIR         ?= $(PREFIX)/share/man
DOCDIR         ?= $(PREFIX)/share/doc/sendense
BASHCOMPDIR    ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR     ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR    ?= $(PREFIX)/share/fish/vendor_completions.d
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
DEB_ARCH       := $(shell dpkg --print-architecture 2>/dev/null)
DEB            := $(BUILD)/sendense_$(VERSION)_$(DEB_ARCH).deb

# Debian packages: build tools, the nbdkit/libnbd/libcrypto headers we bind, and every
# peer the tests run for real.
DEB_PACKAGES := gcc make pkg-config nbdkit nbdkit-plugin-dev libnbd-bin libnbd-dev libssl-dev \
                python3-libnbd qemu-utils openssh-server openssh-client bc time \
                expect e2fsprogs fdisk systemd util-linux groff-base curl \
                qemu-system-common libguestfs-tools linux-image-cloud-$(DEB_ARCH)

GO_SOURCES   := $(shell find . -name '*.go' -not -path './$(BUILD)/*') go.mod go.sum
FRONT        := $(BUILD)/nbdkit-sendense-plugin.so
GOLIB        := $(BUILD)/sendense-plugin-go.so
CLI          := $(BUILD)/sendense
FAKEVDDK     := $(BUILD)/fakevddk/lib64/libvixDiskLib.so.8
# SeaweedFS, the S3 server (with Object Lock) of the offsite tests and
# bench/offsite.sh: built once per machine by tests/build-weed.sh.
WEED_VERSION := v0.0.0-20261109003541-7506e5f91cd6
WEED         := $(BUILD)/weed
# nbdkit's own vddk plugin (Debian ships none), the peer the fake VDDK and
# our plugin are checked against (tests/test-plugin-vddk-peer.sh): built
# from Debian's nbdkit source (SHA-256 from its .dsc) once per machine by
# tests/build-nbdkit-vddk.sh.
NBDKIT_VDDK_VERSION := 1.42.3
NBDKIT_VDDK_SHA256  := cc6e451f7f6e33243ade6a5451465734bbd90142b84630bde0e0747f5656c2eb
NBDKIT_VDDK         := $(BUILD)/nbdkit-vddk-plugin.so

.PHONY: all deps weed nbdkit-vddk test unit-test integration-test vet demo bench docs install deb clean

all: $(FRONT) $(GOLIB) $(CLI) $(FAKEVDDK)

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The C front nbdkit loads; it loads the Go library after nbdkit forks. It
# shares vddk/loader.c (finding and loading VDDK, vddk/stubs.h) with the Go
# side, compiled with hidden visibility so the two copies never mix.
$(FRONT): plugin/front/front.c vddk/loader.c vddk/vixdisklib.h vddk/stubs.h VERSION | $(BUILD)
	$(CC) $(CFLAGS) -Wall -Wextra -fPIC -shared -fvisibility=hidden -Ivddk \
	  -DSENDENSE_VERSION='"$(VERSION)"' -o $@ plugin/front/front.c vddk/loader.c -ldl

# The Go plugin (c-shared), loaded by the front from the same directory.
$(GOLIB): $(GO_SOURCES) | $(BUILD)
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared $(GOFLAGS_LD) -o $@ .
	@rm -f $(BUILD)/sendense-plugin-go.h

$(CLI): $(GO_SOURCES) | $(BUILD)
	CGO_ENABLED=1 $(GO) build $(GOFLAGS_LD) -o $@ ./cmd/sendense

# Our fake libvixDiskLib over local files (tests only, never shipped).
$(FAKEVDDK): $(wildcard tests/fakevddk/*.c tests/fakevddk/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Wall -Wextra -fPIC -shared -Wl,-soname,libvixDiskLib.so.8 \
	  -o $@ $(filter %.c,$^) -lpthread

$(BUILD):
	mkdir -p $@

weed: $(WEED)

$(WEED): tests/build-weed.sh | $(BUILD)
	tests/build-weed.sh $(WEED_VERSION) $@

nbdkit-vddk: $(NBDKIT_VDDK)

$(NBDKIT_VDDK): tests/build-nbdkit-vddk.sh | $(BUILD)
	tests/build-nbdkit-vddk.sh $(NBDKIT_VDDK_VERSION) $(NBDKIT_VDDK_SHA256) $@

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

unit-test:
	$(GO) test ./...

integration-test: all
	tests/run.sh

test: deps all $(WEED) $(NBDKIT_VDDK) vet unit-test integration-test

demo: deps all
	tests/demo.sh

bench: deps all $(WEED)
	@for b in bench/*.sh; do echo "== $$b"; $$b || exit 1; done

# docs/cli.md is generated from the command definitions (a test checks it).
docs:
	$(GO) test ./cmd/sendense -run TestCLIReferenceUpToDate -update -count=1

# The CLI, the plugin pair (into nbdkit's plugin directory, so that
# `nbdkit sendense …` works), man pages and completions generated from the
# command definitions, the systemd unit and the example configuration.
install: $(FRONT) $(GOLIB) $(CLI)
	@test -n "$(PLUGINDIR)" || { echo "nbdkit's plugin directory is unknown: install nbdkit or set PLUGINDIR"; exit 1; }
	install -D -m 0755 $(CLI) $(DESTDIR)$(BINDIR)/sendense
	install -D -m 0755 $(FRONT) $(DESTDIR)$(PLUGINDIR)/nbdkit-sendense-plugin.so
	install -D -m 0755 $(GOLIB) $(DESTDIR)$(PLUGINDIR)/sendense-plugin-go.so
	$(CLI) generate --man $(DESTDIR)$(MANDIR)/man1 \
	  --bash-completion $(DESTDIR)$(BASHCOMPDIR)/sendense \
	  --zsh-completion $(DESTDIR)$(ZSHCOMPDIR)/_sendense \
	  --fish-completion $(DESTDIR)$(FISHCOMPDIR)/sendense.fish
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	sed 's|/usr/bin/sendense|$(BINDIR)/sendense|' contrib/systemd/sendense.service \
	  > $(DESTDIR)$(SYSTEMDUNITDIR)/sendense.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/sendense.service
	install -D -m 0644 examples/sendense.toml $(DESTDIR)$(DOCDIR)/examples/sendense.toml

# A Debian package of what make install installs, under /usr (gzip: xz
# takes minutes for the two Go binaries on two cores).
deb: $(DEB)

$(DEB): $(FRONT) $(GOLIB) $(CLI) contrib/debian/control contrib/systemd/sendense.service examples/sendense.toml
	rm -rf $(BUILD)/deb
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BUILD)/deb PREFIX=/usr SYSTEMDUNITDIR=/lib/systemd/system
	gzip -9n $(BUILD)/deb/usr/share/man/man1/*.1
	mkdir -p $(BUILD)/deb/DEBIAN
	sed -e 's/@VERSION@/$(VERSION)/' -e 's/@ARCH@/$(DEB_ARCH)/' \
	    -e "s/@SIZE@/$$(du -sk $(BUILD)/deb | cut -f1)/" contrib/debian/control > $(BUILD)/deb/DEBIAN/control
	dpkg-deb --root-owner-group -Zgzip --build $(BUILD)/deb $@

clean:
	rm -rf $(BUILD)

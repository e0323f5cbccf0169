# Sendense capture — build, test, demo and benchmarks.
#
#   make          build everything into build/
#   make deps     install the Debian packages the build and the tests need
#   make test     deps + build + unit and integration tests
#   make demo     the whole backup story against the built-in vCenter simulator
#   make bench    side-by-side benchmarks (bench/*.sh), figures printed as ratios

SHELL       := /bin/bash
GO          ?= go
CC          ?= gcc
CFLAGS      ?= -O2 -g
VERSION     := $(shell cat VERSION)
BUILD       := build
GOFLAGS_LD  := -ldflags "-X github.com/sendense/capture/internal/version.Version=$(VERSION)"
PLUGINDIR   ?= $(shell nbdkit --dump-config 2>/dev/null | sed -n 's/^plugindir=//p')

# Debian packages: build tools, the nbdkit/libnbd headers we bind, and every
# peer the tests run for real.
DEB_PACKAGES := gcc make pkg-config nbdkit nbdkit-plugin-dev libnbd-bin libnbd-dev \
                python3-libnbd qemu-utils openssh-server openssh-client bc time \
                expect e2fsprogs fdisk systemd util-linux

GO_SOURCES   := $(shell find . -name '*.go' -not -path './$(BUILD)/*') go.mod go.sum
FRONT        := $(BUILD)/nbdkit-sendense-plugin.so
GOLIB        := $(BUILD)/sendense-plugin-go.so
CLI          := $(BUILD)/sendense
FAKEVDDK     := $(BUILD)/fakevddk/lib64/libvixDiskLib.so.8
# SeaweedFS, the S3 server (with Object Lock) of the offsite tests and
# bench/offsite.sh: built once per machine by tests/build-weed.sh.
WEED_VERSION := v0.0.0-20261109003541-7506e5f91cd6
WEED         := $(BUILD)/weed

.PHONY: all deps weed test unit-test integration-test vet demo bench docs install clean

all: $(FRONT) $(GOLIB) $(CLI) $(FAKEVDDK)

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The C front nbdkit loads; it loads the Go library after nbdkit forks.
$(FRONT): plugin/front/front.c VERSION | $(BUILD)
	$(CC) $(CFLAGS) -Wall -Wextra -fPIC -shared -DSENDENSE_VERSION='"$(VERSION)"' \
	  -o $@ $< -ldl

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

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

unit-test:
	$(GO) test ./...

integration-test: all
	tests/run.sh

test: deps all $(WEED) vet unit-test integration-test

demo: deps all
	tests/demo.sh

bench: deps all $(WEED)
	@for b in bench/*.sh; do echo "== $$b"; $$b || exit 1; done

# docs/cli.md is generated from the command definitions (a test checks it).
docs:
	$(GO) test ./cmd/sendense -run TestCLIReferenceUpToDate -update -count=1

install: $(FRONT) $(GOLIB)
	install -D -m 0755 $(FRONT) $(DESTDIR)$(PLUGINDIR)/nbdkit-sendense-plugin.so
	install -D -m 0755 $(GOLIB) $(DESTDIR)$(PLUGINDIR)/sendense-plugin-go.so

clean:
	rm -rf $(BUILD)

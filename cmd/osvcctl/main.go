// Command osvcctl is the administrator's CLI of osvc: it imports images and
// updates, schedules their servicing and follows the runs, all through the
// osvc-server gRPC API.
package main

import (
	"context"

	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/buildinfo"
	"github.com/osvc/osvc/pkg/cmdline"
	"github.com/osvc/osvc/pkg/pki"
	"github.com/osvc/osvc/pkg/transfer"
)

// defaultServer is the address osvc-server listens on by default.
const defaultServer = "localhost:7300"

// serverEnv names the environment variable that overrides the default --server.
const serverEnv = "OSVC_SERVER"

func main() { os.Exit(realMain()) }

func realMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one osvcctl command line. Errors are rendered on stderr for the
// user before they are returned, so the caller only maps them to an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cli := &cli{stdout: stdout, stderr: stderr, getenv: os.Getenv}
	root := cli.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if cli.conn != nil {
		cli.conn.Close()
	}
	if err != nil {
		fmt.Fprint(stderr, renderError(err, cli.server))
		return err
	}
	return nil
}

// cli holds the global flags and the connection shared by the subcommands of
// one invocation.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string

	configFile string
	server     string
	output     string
	timeout    time.Duration
	caFile     string
	insecure   bool
	tokenFile  string
	tokenArg   string
	// login is what osvcctl login saved, nil when it never ran.
	login *loginConfig

	conn *grpc.ClientConn
}

func (c *cli) rootCommand() *cobra.Command {
	login, loginErr := c.loadConfig()
	c.login = login
	root := &cobra.Command{
		Use:   "osvcctl",
		Short: "Service Windows images offline with osvc",
		Long: `osvcctl talks to osvc-server: import WIM images and update packages,
schedule updates for an image and watch the servicing run.`,
		SilenceUsage:          true,
		SilenceErrors:         true,
		Args:                  cobra.ArbitraryArgs,
		RunE:                  groupRunE,
		DisableFlagsInUseLine: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := cmdline.Apply(cmdline.Pflag(cmd.Root().PersistentFlags()), c.configFile, c.getenv); err != nil {
				return usageErrorf("%w", err)
			}
			// The authority osvcctl login saved goes with its server.
			if c.caFile == "" && login != nil && login.Server == c.server {
				c.caFile = login.CAFile
			}
			switch c.output {
			case outputTable, outputJSON:
			default:
				return usageErrorf("--output %q: use table or json", c.output)
			}
			if c.server == "" {
				return usageErrorf("--server is empty: give host:port of osvc-server")
			}
			if c.tokenArg != "" {
				return usageErrorf("--token: a token on the command line is visible to every user of the machine (ps); give it with --token-file FILE, $%s or osvcctl login", tokenEnv)
			}
			if loginErr != nil {
				return loginErr
			}
			return nil
		},
	}
	root.Version = buildinfo.Read().String()
	root.SetVersionTemplate("osvcctl {{.Version}}\n")
	// The environment (OSVC_SERVER, OSVC_CA_FILE, …) and --config set the
	// flags the command line leaves unset (cmdline.Apply), before the
	// command runs; the server osvcctl login saved is the default.
	server := defaultServer
	if login != nil && login.Server != "" {
		server = login.Server
	}
	pf := root.PersistentFlags()
	pf.StringVar(&c.configFile, cmdline.ConfigFlag, "", "YAML `FILE` of settings, these flags' names as keys (server: osvc1:7300); the command line and OSVC_<FLAG> environment variables win over it")
	pf.StringVar(&c.server, "server", server, "osvc-server address `HOST:PORT`, or several replicas comma-separated; $"+serverEnv+" sets it")
	pf.StringVarP(&c.output, "output", "o", outputTable, "output `FORMAT`: table or json")
	pf.StringVar(&c.caFile, "ca-file", "", "PEM `FILE` of the authority that signed the server's certificate; default: the one osvcctl login saved for the server, else "+pki.DefaultCAFile+" when it exists (the server's own, started here), else the system's; $"+pki.CAFileEnv+" sets it")
	pf.BoolVar(&c.insecure, "insecure", false, "plaintext, to a server started with --insecure on this machine; $"+pki.InsecureEnv+"=true sets it")
	// --token would put the secret where ps shows it: refused with the way.
	pf.StringVar(&c.tokenArg, "token", "", "refused: a token on the command line is visible to every user of the machine")
	_ = pf.MarkHidden("token")
	pf.StringVar(&c.tokenFile, "token-file", "", "`FILE` holding the token to call with; $OSVC_TOKEN_FILE sets it; default: $"+tokenEnv+", the one osvcctl login saved, else "+defaultTokenFile+" (the first admin token of a server started here)")
	pf.DurationVar(&c.timeout, "timeout", 30*time.Second, "time limit of each request, e.g. 2m; uploads and watches are not limited by it")

	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErrorf("%w\nusage: %s", err, cmd.UseLine())
	})
	root.AddCommand(c.siteCommand(), c.imageCommand(), c.dpCommand(), c.updateCommand(), c.scheduleCommand(), c.runCommand(), c.agentCommand(),
		c.tokenCommand(), c.auditCommand(), c.loginCommand(), c.logoutCommand(), c.whoamiCommand())
	return root
}

// dial connects lazily: grpc.NewClient does not touch the network, the first
// call does, so a server that is down shows up as Unavailable on that call.
func (c *cli) dial() (*grpc.ClientConn, error) {
	if c.conn != nil {
		return c.conn, nil
	}
	creds, err := pki.ClientCredentials(c.server, pki.ClientOptions{CAFile: c.caFile, Insecure: c.insecure})
	if err != nil {
		return nil, usageErrorf("%w", err)
	}
	token, err := c.resolveToken()
	if err != nil {
		return nil, err
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithChainUnaryInterceptor(nativeErrorsUnary),
		grpc.WithChainStreamInterceptor(nativeErrorsStream),
	}, transfer.DialOptions()...)
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(pki.Bearer(token, !c.insecure)))
	}
	conn, err := pki.NewClient(c.server, opts...)
	if err != nil {
		return nil, usageErrorf("--server %q: %w", c.server, err)
	}
	c.conn = conn
	return conn, nil
}

// callContext bounds one unary request by --timeout.
func (c *cli) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

func (c *cli) images() (osvcv1.ImageServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewImageServiceClient(conn), nil
}

func (c *cli) updates() (osvcv1.UpdateServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewUpdateServiceClient(conn), nil
}

func (c *cli) servicing() (osvcv1.ServicingServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewServicingServiceClient(conn), nil
}

func (c *cli) agents() (osvcv1.AgentServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewAgentServiceClient(conn), nil
}

func (c *cli) contents() (osvcv1.ContentServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewContentServiceClient(conn), nil
}

// groupCommand is a command that only holds subcommands.
func groupCommand(use, short string) *cobra.Command {
	// A group runs only to refuse what is not one of its subcommands, so its
	// usage line takes no flags.
	return &cobra.Command{Use: use, Short: short, Args: cobra.ArbitraryArgs, RunE: groupRunE, DisableFlagsInUseLine: true}
}

// groupRunE shows a command group's help when it is called alone, and refuses
// an unknown subcommand: cobra would print the help and exit 0, so a typo in a
// script ("osvcctl run lsit") would pass for success.
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	cmd.SuggestionsMinimumDistance = 2 // cobra's default, set only on its own path
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(": did you mean %s?", strings.Join(s, " or "))
	}
	return usageErrorf("%s\nrun '%s --help' for its commands", msg, cmd.CommandPath())
}

// exactArgs is cobra.ExactArgs with the usage line in the error, since usage
// is not printed on errors (it would bury server errors).
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		return usageErrorf("%s takes %d argument(s), got %d\nusage: %s", cmd.CommandPath(), n, len(args), cmd.UseLine())
	}
}

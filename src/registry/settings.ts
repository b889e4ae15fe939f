import { type Config, config } from "../config/index.js";

/** The settings the registry code depends on (from src/config), passed down from its entry points. */
export interface RegistrySettings {
  /** KINDLING_REGISTRY_USER / KINDLING_REGISTRY_PASSWORD: explicit credentials for any registry. */
  user?: string;
  password?: string;
  /** KINDLING_AUTH_FILE: a Kindling-only auth file; when set, no other file is read. */
  kindlingAuthFile?: string;
  /** REGISTRY_AUTH_FILE (containers tools): when set, no other file is read. */
  registryAuthFile?: string;
  /** XDG_RUNTIME_DIR: containers tools keep `containers/auth.json` below it. */
  xdgRuntimeDir?: string;
  /** DOCKER_CONFIG: the docker CLI's config directory (default ~/.docker). */
  dockerConfig?: string;
  /** HOME. */
  home: string;
  /** KINDLING_REGISTRIES_CONF: mirrors and insecure registries. */
  registriesConf: string;
}

export function registrySettings(cfg: Config = config()): RegistrySettings {
  return {
    user: cfg.registryUser,
    password: cfg.registryPassword,
    kindlingAuthFile: cfg.authFile,
    registryAuthFile: cfg.registryAuthFile,
    xdgRuntimeDir: cfg.xdgRuntimeDir,
    dockerConfig: cfg.dockerConfig,
    home: cfg.userHome,
    registriesConf: cfg.registriesConf,
  };
}

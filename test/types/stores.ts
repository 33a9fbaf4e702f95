// The clients and pools users already have are accepted by the store constructors as they are.
import mysqlCallbacks from 'mysql2';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { createClient } from 'redis';
import { createClient as createClientV4 } from 'redis4';
import { MySqlStore } from 'sessionflow/stores/mysql';
import { PostgresStore } from 'sessionflow/stores/postgres';
import { RedisStore } from 'sessionflow/stores/redis';

new PostgresStore(new pg.Pool());
new MySqlStore(mysql.createPool({}));
new MySqlStore(mysqlCallbacks.createPool({}));
new RedisStore({ client: createClient() });
// node-redis v4, plain and in legacy mode.
new RedisStore({ client: createClientV4() });
new RedisStore({ client: createClientV4({ legacyMode: true }) });

// A single pg.Client is not a pool (refused at run time too, with what to pass).
// @ts-expect-error
new PostgresStore(new pg.Client());

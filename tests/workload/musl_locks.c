/*
 * Built by tests/lock.rs with musl-gcc (dynamic): musl's lock functions call
 * each other (pthread_mutex_lock -> pthread_mutex_timedlock ->
 * pthread_mutex_trylock), all of them probed. Prints its locks, waits for a
 * line on stdin, then: two threads take one mutex 20 times each, holding it
 * 1 ms (so the other one waits inside those nested calls); a trylock of a
 * mutex another thread holds (EBUSY, once); two threads write-lock one
 * rwlock 5 times each, holding it 1 ms. Prints what it did.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define MUTEX_ROUNDS 20
#define RWLOCK_ROUNDS 5

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t rwlock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_barrier_t held;

static void *mutex_rounds(void *arg)
{
	(void)arg;
	for (int i = 0; i < MUTEX_ROUNDS; i++) {
		pthread_mutex_lock(&mutex);
		usleep(1000);
		pthread_mutex_unlock(&mutex);
	}
	return NULL;
}

static void *rwlock_rounds(void *arg)
{
	(void)arg;
	for (int i = 0; i < RWLOCK_ROUNDS; i++) {
		pthread_rwlock_wrlock(&rwlock);
		usleep(1000);
		pthread_rwlock_unlock(&rwlock);
	}
	return NULL;
}

static void *hold_busy(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&busy);
	pthread_barrier_wait(&held); /* it is held */
	pthread_barrier_wait(&held); /* the trylock failed */
	pthread_mutex_unlock(&busy);
	return NULL;
}

static void both(void *(*fn)(void *))
{
	pthread_t a, b;

	pthread_create(&a, NULL, fn, NULL);
	pthread_create(&b, NULL, fn, NULL);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
}

int main(void)
{
	char line[16];
	pthread_t holder;
	int busy_ret;

	printf("{\"event\":\"ready\",\"pid\":%d,\"mutex\":\"%p\",\"busy\":\"%p\",\"rwlock\":\"%p\"}\n",
	       (int)getpid(), (void *)&mutex, (void *)&busy, (void *)&rwlock);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	both(mutex_rounds);

	pthread_barrier_init(&held, NULL, 2);
	pthread_create(&holder, NULL, hold_busy, NULL);
	pthread_barrier_wait(&held);
	busy_ret = pthread_mutex_trylock(&busy);
	pthread_barrier_wait(&held);
	pthread_join(holder, NULL);

	both(rwlock_rounds);

	printf("{\"event\":\"done\",\"mutex_acquisitions\":%d,\"busy_acquisitions\":1,"
	       "\"busy_trylock_ret\":%d,\"rwlock_write_acquisitions\":%d}\n",
	       2 * MUTEX_ROUNDS, busy_ret, 2 * RWLOCK_ROUNDS);
	fflush(stdout);
	return busy_ret == EBUSY ? 0 : 1;
}
